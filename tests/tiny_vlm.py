"""A tiny randomly initialised Gemma 3 vision-language model, built offline for tests.

It has MedGemma's architecture (``Gemma3ForConditionalGeneration``: a SigLIP vision tower,
a multimodal projector and a Gemma 3 text decoder), a small ``GemmaTokenizer`` and a
``Gemma3Processor`` with Gemma 3's chat template, at about 130k parameters. Saved with
``save_pretrained`` it loads back through ``AutoProcessor`` / ``AutoModelForImageTextToText``,
the code path of the real model. Its weights are random: its text is never a finding.

Test modules import :func:`tiny_vlm_dir`; the model is built once per test session (kept
under pytest's base temporary folder) however many modules import the fixture.
"""

from __future__ import annotations

import string
from pathlib import Path

import pytest

SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>"]
IMAGE_TOKEN = "<image_soft_token>"
IMAGE_SIZE = 56
TOKENS_PER_IMAGE = 4

# Gemma 3's chat template (the turn format of google/gemma-3-*-it and google/medgemma-4b-it):
# the system text is folded into the first user turn, image items become <start_of_image>,
# which the processor expands into the image's soft tokens.
CHAT_TEMPLATE = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\n'}}
{%- endif -%}
"""


def build_tiny_vlm(out: Path, seed: int = 0) -> Path:
    """Build, randomise and save the tiny model and its processor under ``out``."""
    import torch
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3ImageProcessor,
        Gemma3Processor,
        Gemma3TextConfig,
        GemmaTokenizer,
        GenerationConfig,
        SiglipVisionConfig,
    )

    pieces = SPECIALS + [IMAGE_TOKEN] + [f"<0x{i:02X}>" for i in range(256)] + ["▁", "\n"]
    pieces += [c for c in string.printable if c.strip() and c not in pieces]
    vocab = {piece: i for i, piece in enumerate(pieces)}
    tok = GemmaTokenizer(
        vocab=vocab,
        merges=[],
        extra_special_tokens={"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": IMAGE_TOKEN},
    )
    tok.add_special_tokens({"additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]})
    processor = Gemma3Processor(
        image_processor=Gemma3ImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}),
        tokenizer=tok,
        chat_template=CHAT_TEMPLATE,
        image_seq_length=TOKENS_PER_IMAGE,
    )
    ids = {name: tok.convert_tokens_to_ids(name) for name in ("<pad>", "<eos>", "<bos>", "<end_of_turn>", IMAGE_TOKEN)}
    text = Gemma3TextConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        max_position_embeddings=4096,
        sliding_window=512,
        pad_token_id=ids["<pad>"],
        eos_token_id=ids["<eos>"],
        bos_token_id=ids["<bos>"],
    )
    vision = SiglipVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=IMAGE_SIZE,
        patch_size=14,
        vision_use_head=False,
    )
    config = Gemma3Config(
        text_config=text,
        vision_config=vision,
        mm_tokens_per_image=TOKENS_PER_IMAGE,
        boi_token_index=tok.convert_tokens_to_ids("<start_of_image>"),
        eoi_token_index=tok.convert_tokens_to_ids("<end_of_image>"),
        image_token_index=ids[IMAGE_TOKEN],
    )
    torch.manual_seed(seed)
    model = Gemma3ForConditionalGeneration(config).eval()
    # A fresh projector is all zeros, which would make every image look the same to the model.
    with torch.no_grad():
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(0.0, 1.0)
    # Random weights favour byte-fallback and control tokens, which decode to nothing visible:
    # keep generation to printable pieces (and the stop tokens) so that tests can compare texts.
    printable = set(range(vocab["▁"], len(pieces))) | {ids["<eos>"], ids["<end_of_turn>"]}
    model.generation_config = GenerationConfig(
        do_sample=False,
        suppress_tokens=[i for i in range(len(pieces)) if i not in printable],
        eos_token_id=[ids["<eos>"], ids["<end_of_turn>"]],
        pad_token_id=ids["<pad>"],
        bos_token_id=ids["<bos>"],
    )
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_vlm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of the saved tiny Gemma 3 VLM (built on first use in this session)."""
    out = tmp_path_factory.getbasetemp() / "tiny_vlm"
    if not (out / "config.json").is_file():
        build_tiny_vlm(out)
    return out
