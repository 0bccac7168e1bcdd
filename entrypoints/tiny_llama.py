"""``base_model: tiny-llama``: a reproducible tiny Llama for laptops, tests and the demo.

It needs no network: a byte-level BPE tokenizer is trained in well under a second on a built-in
corpus (seeded sentences over a fixed word list), wrapped as a ``PreTrainedTokenizerFast`` with a
chat template that puts EOS after every assistant turn, and a ``LlamaForCausalLM`` is built from a
small config with seeded random weights. The same version always gives byte-identical files, so a
model dir saved by one process is the model another process builds. The weights are random: a base
that knows nothing, which is exactly what makes a fine-tuning lift visible in seconds on a CPU.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import tempfile
from pathlib import Path

NAME = "tiny-llama"
VERSION = 2  # bump whenever the tokenizer corpus or the model config changes (cache key)

# The chat template: EOS closes every assistant turn, or generation runs on.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|assistant|>\n' + message['content'] + eos_token + '\n' }}"
    "{% else %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

SPECIAL_TOKENS = ["<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>"]

_WORDS = """
the of and to in a is that for it as was with be by on not he this are or his from at which but have an they
you were their one all we can her has there been if more when will would who so no she other its may these
about than into after over new only some could also time two first any my now such like our what up out them
then do most made over did many before must through back years where much your way well down should because
each just those people how too little state good very make world still own see men work long get here between
both life being under never day same another know while last might us great old year off come since against go
came right used take three account client portfolio balance fund funds equity equities bond bonds cash income
growth risk return returns rate rates interest tax taxes fee fees investment investments asset assets allocation
market markets value price shares stock stocks dividend dividends yield quarter annual monthly summary report
review recommendation recommend advisor advisory goal goals retirement savings plan plans horizon tolerance
conservative moderate aggressive increase decrease rebalance total net gross amount percent percentage million
thousand date period performance benchmark index sector exposure liability liabilities loan mortgage credit debit
payment payments deposit withdrawal transfer contribution contributions pension insurance premium policy claim
claims court case law legal brief injury employer employee worker workers compensation medical report doctor
hospital treatment diagnosis patient symptom dose customer support order refund shipping product service issue
ticket email phone address name age city country please thank thanks dear regards sincerely hello hi yes ok
note notes key points action items next steps summary overall current previous target expected estimated based
following include includes including provide provides provided given shows show shown higher lower stable strong
weak positive negative above below within across during per each every all none mr ms mrs dr jan feb mar apr may
jun jul aug sep oct nov dec january february march april june july august september october november december
monday tuesday wednesday thursday friday usd eur gbp dollars euros zero one two three four five six seven eight nine
ten hundred first second third high low medium
""".split()


def _corpus(seed: int = 0, sentences: int = 3000) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(sentences):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(4, 14))]
        words = [w.capitalize() if rng.random() < 0.2 else w for w in words]
        words[0] = words[0].capitalize()
        number = rng.choice(["", f" {rng.randint(0, 999)}", f" {rng.randint(1, 99)}.{rng.randint(0, 99):02d}%", f" ${rng.randint(1, 999):,}"])
        out.append(" ".join(words) + number + rng.choice([".", ",", ":", ";", "?", "!"]))
    return out


def build_tokenizer():
    """Train the byte-level BPE tokenizer (deterministic) and wrap it with the chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=2048,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(), trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        additional_special_tokens=["<|system|>", "<|user|>", "<|assistant|>"],
        model_max_length=2048,
    )
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def build_model(tokenizer, seed: int = 0):
    """A small Llama with seeded random weights."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        # Wider than the usual 0.02: with tied 128-wide embeddings, 0.02 caps the logit range so low that
        # a frozen random base learns a structured task several times slower through LoRA.
        initializer_range=0.1,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    finally:
        torch.random.set_rng_state(state)  # building the base must not shift the caller's RNG stream
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def materialize(cache_dir: str | os.PathLike | None = None) -> Path:
    """Save tiny-llama (tokenizer + model) to a folder once and return it; later calls reuse it.

    Written to a temporary folder and renamed, so a crash never leaves a half-written model behind.
    """
    root = Path(cache_dir or os.environ.get("LAUNCHER_CACHE") or Path.home() / ".cache" / "launcher")
    target = root / f"{NAME}-v{VERSION}"
    if (target / "config.json").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    from transformers.utils import logging as hf_logging

    tokenizer = build_tokenizer()
    model = build_model(tokenizer)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=root))
    try:
        tokenizer.save_pretrained(tmp)
        hf_logging.disable_progress_bar()  # a 3 MB model needs no "Writing model shards" bar
        try:
            model.save_pretrained(tmp)
        finally:
            hf_logging.enable_progress_bar()
        try:
            tmp.rename(target)
        except OSError:  # another process won the race; its copy is identical
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def digest(folder: Path) -> str:
    """A hash of the saved files, to prove two builds are identical."""
    h = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        if path.is_file():
            h.update(path.name.encode())
            h.update(path.read_bytes())
    return h.hexdigest()
