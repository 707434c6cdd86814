"""The toy model's character-level tokenizer and chat template.

One token per character keeps the world transparent (a token count is a character count) and lets a
tiny model learn arithmetic digit by digit. The tokenizer is a plain `PreTrainedTokenizerFast`, so it
saves and loads with `AutoTokenizer` like any Hub tokenizer.
"""

from __future__ import annotations

import string

# Role and control tokens; `<|end|>` closes every turn and is the model's EOS.
PAD, UNK, END = "<pad>", "<unk>", "<|end|>"
SYSTEM, USER, ASSISTANT = "<|system|>", "<|user|>", "<|assistant|>"
SPECIAL_TOKENS = (PAD, UNK, SYSTEM, USER, ASSISTANT, END)

# Every character the toy world writes, plus the rest of printable ASCII so odd model output still
# round-trips. Anything else becomes <unk>.
CHARACTERS = tuple(dict.fromkeys(string.digits + string.ascii_letters + string.punctuation + " \n\t"))

# Jinja chat template. The assistant content is rendered verbatim (no strip), so a prefilled turn keeps
# every space and newline; `{% generation %}` marks the assistant tokens (content and its end token)
# for TRL's assistant-only loss. transformers implements continue_final_message by cutting the render
# right after the final message's content, which this layout allows.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}" + SYSTEM + "{{ message['content'] }}" + END + "{%- "
    "elif message['role'] == 'user' -%}" + USER + "{{ message['content'] }}" + END + "{%- "
    "elif message['role'] == 'assistant' -%}" + ASSISTANT + "{% generation %}{{ message['content'] }}"
    + END + "{% endgeneration %}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}" + ASSISTANT + "{%- endif -%}"
)


def build_tokenizer(model_max_length: int = 1024):
    """Return the toy `PreTrainedTokenizerFast` (char-level, fixed vocabulary, chat template set)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate((*SPECIAL_TOKENS, *CHARACTERS))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    # Every character is its own piece (newlines included, hence [\s\S] rather than '.').
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    # Fuse joins the pieces with nothing in between (the default decoder would insert spaces).
    core.decoder = decoders.Fuse()
    core.add_special_tokens(list(SPECIAL_TOKENS))
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=PAD,
        unk_token=UNK,
        eos_token=END,
        model_max_length=model_max_length,
        padding_side="left",
        clean_up_tokenization_spaces=False,
        additional_special_tokens=[SYSTEM, USER, ASSISTANT],
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def char_encoder(tokenizer):
    """Return a fast `text -> ids` function equal to `tokenizer(text, add_special_tokens=False)` for toy text.

    Building warm-start data tokenizes hundreds of thousands of short segments; a dict lookup per
    character is far quicker than a tokenizer call per segment.
    """
    import re

    vocab = tokenizer.get_vocab()
    unk = tokenizer.unk_token_id
    specials = re.compile("|".join(re.escape(t) for t in sorted(SPECIAL_TOKENS, key=len, reverse=True)))

    def encode(text: str) -> list[int]:
        ids, pos = [], 0
        for m in specials.finditer(text):
            ids += [vocab.get(c, unk) for c in text[pos : m.start()]]
            ids.append(vocab[m.group()])
            pos = m.end()
        ids += [vocab.get(c, unk) for c in text[pos:]]
        return ids

    return encode
