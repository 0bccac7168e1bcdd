"""launcher plan: model shapes, memory notes, fit flags, time and cost, the CLI (tables and --json) and its
bad input. The memory arithmetic itself is tests/test_memory.py's."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from launcher.cli.main import app
from launcher.errors import NotFoundError, SpecError
from launcher.memory import qlora_memory_target
from launcher.plan import DatasetTokens, check_fits, find_model, plan, resolve_model
from launcher.spec import JobSpec, TrainConfig

runner = CliRunner()
LLAMA3_8B = "meta-llama/Meta-Llama-3-8B"
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def make_spec(tmp_path, **overrides) -> JobSpec:
    # fast_path off: these cases check the standard path's micro_batch_size arithmetic by hand; the GPU
    # fast path (which sizes its own micro-batches) has its own test below.
    values = {"name": "job", "base_model": LLAMA3_8B, "data": {"train": "s3://bucket/train.jsonl"}, "training": {"fast_path": "off"}}
    for key, value in overrides.items():
        values[key] = {**values.get(key, {}), **value} if isinstance(value, dict) else value
    return JobSpec.model_validate(values)


def write_spec(tmp_path, text: str) -> str:
    path = tmp_path / "job.yaml"
    path.write_text(textwrap.dedent(text))
    return str(path)


def write_train(tmp_path, n: int = 20) -> str:
    path = tmp_path / "train.jsonl"
    with path.open("w") as handle:
        for i in range(n):
            handle.write(json.dumps({"prompt": "abcd" * 10, "completion": f"answer {i:04d} " + "x" * 8}) + "\n")
    return str(path)


# --- the model catalog ---------------------------------------------------------------------------------
def test_llama3_8b_shape_gives_the_published_parameter_count():
    shape = resolve_model(LLAMA3_8B)
    # embeddings 128,256 x 4,096 = 525,336,576, twice (untied lm_head) = 1,050,673,152
    # per layer: q 4096^2 + k 4096x1024 + v 4096x1024 + o 4096^2 = 41,943,040; MLP 3 x 4096 x 14336 = 176,160,768;
    # two norms 8,192 -> 218,112,000 x 32 layers = 6,979,584,000; final norm 4,096
    assert shape.params == 1_050_673_152 + 6_979_584_000 + 4_096 == 8_030_261_248
    assert resolve_model("meta-llama/Meta-Llama-3-8B-Instruct") == shape  # -Instruct ids share the shape
    assert resolve_model("llama-3.1-8b-instruct").name == "meta-llama/Llama-3.1-8B"  # case-insensitive, org optional


def test_tiny_llama_catalog_entry_matches_the_saved_model(tiny_llama_dir):
    from_catalog = resolve_model("tiny-llama")
    from_folder = resolve_model(str(tiny_llama_dir))  # reads its config.json
    fields = ("hidden", "layers", "heads", "kv_heads", "head_dim", "intermediate", "vocab", "tied", "max_positions")
    assert {f: getattr(from_catalog, f) for f in fields} == {f: getattr(from_folder, f) for f in fields}
    assert from_catalog.vocab == 2048 and from_catalog.tied


def test_unknown_hub_id_is_an_error_naming_the_fix():
    with pytest.raises(SpecError) as info:
        resolve_model("meta-llama/Meta-Llama-3-80B")
    message = str(info.value)
    assert "Did you mean 'meta-llama/Meta-Llama-3-8B'" in message or "Meta-Llama-3-70B" in message
    assert "Known: tiny-llama" in message and "To fix: set base_model to a local folder holding the model's config.json" in message


def test_local_folder_without_config_is_not_found(tmp_path):
    with pytest.raises(NotFoundError, match="has no config.json"):
        resolve_model(str(tmp_path))
    with pytest.raises(NotFoundError, match="does not exist"):
        resolve_model("./no/such/model")


def test_hub_id_in_the_local_hugging_face_cache_is_read(tmp_path, monkeypatch):
    # The cache layout huggingface_hub writes: models--ORG--NAME/refs/main -> snapshots/<commit>/config.json
    repo = tmp_path / "hub" / "models--acme--Custom-7B"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    config = {"model_type": "mistral", "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
              "num_key_value_heads": 8, "intermediate_size": 14336, "vocab_size": 32768, "tie_word_embeddings": False}  # fmt: skip
    (repo / "snapshots" / "abc123" / "config.json").write_text(json.dumps(config))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    shape = find_model("acme/Custom-7B")
    assert shape is not None and shape.params == resolve_model("mistralai/Mistral-7B-v0.3").params == 7_248_023_552


# --- memory notes ---------------------------------------------------------------------------------------
def test_qlora_fast_path_memory_target_is_the_standard_paths_and_noted(tmp_path):
    spec = make_spec(tmp_path, method="qlora", training={"fast_path": "auto", "micro_batch_size": 8, "max_seq_len": 2048})
    # The figure the H200 run logged; the Trainer-style QLoRA baseline peaked at 40.5 GiB there.
    assert qlora_memory_target(resolve_model(LLAMA3_8B), spec.train_config()) / 2**30 == pytest.approx(37.6, abs=0.05)
    notes = plan(spec, dataset_tokens=1_000_000).notes
    assert any(n.startswith("QLoRA's fast path uses up to 37.6 GiB") and "max_memory_gib" in n for n in notes)
    capped = plan(make_spec(tmp_path, method="qlora", training={"fast_path": "auto", "max_memory_gib": 20}), dataset_tokens=1_000_000)
    assert not any("QLoRA's fast path uses" in n for n in capped.notes)
    assert qlora_memory_target(resolve_model(LLAMA3_8B), TrainConfig(method="lora")) is None


def test_max_memory_below_what_one_example_needs_is_noted(tmp_path):
    fast = {"fast_path": "auto", "max_seq_len": 2048}
    low = plan(make_spec(tmp_path, training={**fast, "max_memory_gib": 10}), dataset_tokens=1_000_000)
    assert any("max_memory_gib 10 is below the" in note for note in low.notes)
    enough = plan(make_spec(tmp_path, training={**fast, "max_memory_gib": 60}), dataset_tokens=1_000_000)
    assert not any("max_memory_gib" in note for note in enough.notes)


# --- fit, time and cost ---------------------------------------------------------------------------------
def test_fit_flags_per_gpu_kind(tmp_path):
    spec = make_spec(tmp_path, training={"micro_batch_size": 8, "max_seq_len": 2048, "gradient_checkpointing": "on"})
    result = plan(spec, dataset_tokens=1_000_000)
    fits = {c.gpu: c.fits for c in result.candidates}
    # needs about 52 GiB with checkpointing: 80 GB and 141 GB cards fit, 24-48 GB cards do not
    assert fits == {"H100": True, "H200": True, "A100-80GB": True, "A100-40GB": False, "L40S": False, "A10G": False, "L4": False}
    assert [c.fits for c in result.candidates] == sorted((c.fits for c in result.candidates), reverse=True)  # fitting rows first


def test_auto_checkpointing_is_used_only_where_needed(tmp_path):
    spec = make_spec(tmp_path, training={"micro_batch_size": 3, "max_seq_len": 2048})  # gradient_checkpointing: auto
    rows = {c.instance_type: c for c in plan(spec, dataset_tokens=1_000_000).candidates}
    assert rows["ml.p5e.48xlarge"].gradient_checkpointing is False  # about 97 GiB without it fits 139.8 GiB
    assert rows["ml.p5.4xlarge"].gradient_checkpointing is True  # 80 GB H100 needs it (about 30 GiB with it)
    assert rows["ml.p5.4xlarge"].fits


def test_hours_and_cost_by_hand(tmp_path):
    # The reference model at the reference sequence length with checkpointing on: the H200 LoRA figure
    # (17,147 tokens/s, measured without checkpointing) x the checkpointing factor 0.737, per H200 and per
    # H100 (scaled by bf16 peak 989/989). 10,000,000 tokens x 2 epochs.
    spec = make_spec(tmp_path, training={"max_seq_len": 2048, "gradient_checkpointing": "on", "epochs": 2})
    rows = {c.instance_type: c for c in plan(spec, dataset_tokens=10_000_000).candidates}
    one = rows["ml.p5.4xlarge"]  # 1x H100, $8.60/h on demand, $3.44/h spot
    hours = 20_000_000 / (17147 * 0.737) / 3600 + 10 / 60  # + the fixed 10-minute overhead
    assert one.tokens_per_s == pytest.approx(17147 * 0.737)
    assert one.hours == pytest.approx(hours)
    assert one.on_demand_cost == pytest.approx(hours * 8.60)
    assert one.spot_cost == pytest.approx(hours * 3.44)
    eight = rows["a3-ultragpu-8g"]  # 8x H200 at $97.50/h: 8 x 0.9^3 = 5.832x one GPU
    assert eight.tokens_per_s == pytest.approx(17147 * 0.737 * 8 * 0.9**3)
    assert eight.on_demand_cost == pytest.approx((20_000_000 / (17147 * 0.737 * 5.832) / 3600 + 10 / 60) * 97.50)
    assert rows["ml.p5e.48xlarge"].spot_cost is None  # no managed spot for it in prices.json
    assert "scaled from H200" in rows["ml.g5.xlarge"].throughput_source


def test_smaller_model_is_faster_but_not_by_flops_alone(tmp_path):
    big = {c.instance_type: c for c in plan(make_spec(tmp_path), dataset_tokens=10**6).candidates}
    small = {c.instance_type: c for c in plan(make_spec(tmp_path, base_model="Qwen/Qwen2.5-0.5B"), dataset_tokens=10**6).candidates}
    ratio = small["ml.p5.4xlarge"].tokens_per_s / big["ml.p5.4xlarge"].tokens_per_s
    assert 3 < ratio < 5  # measured on an H200: 22,837 / 6,110 = 3.7 (FLOPs alone would say about 14)


def test_remote_data_without_tokens_leaves_time_unknown(tmp_path):
    result = plan(make_spec(tmp_path))
    assert result.dataset.tokens is None and "--tokens" in result.dataset.note
    assert all(c.hours is None and c.on_demand_cost is None for c in result.candidates)


def training_rows(base_model: str, train: str, max_seq_len: int) -> int:
    """Tokens in the rows training builds from ``train``: its tokenizer, its tokenisation."""
    from entrypoints import models, sequences
    from launcher.data import load_examples

    tokenizer = models.load_tokenizer(base_model)
    return sum(len(sequences.tokenize(tokenizer, e, max_seq_len)) for e in load_examples(train))


def test_the_example_dataset_is_counted_as_training_tokenises_it(tiny_llama_dir):
    spec = JobSpec.from_yaml(EXAMPLES / "fin-summary.yaml")  # tiny-llama, with an eval set: nothing held out
    result = plan(spec)
    assert result.dataset == DatasetTokens(training_rows("tiny-llama", spec.data.train, spec.training.max_seq_len), 1200,
                                           "counted", "1,200 examples, tiny-llama tokenizer and chat template")


def test_a_model_without_a_chat_template_is_counted_with_the_one_training_gives_it(tmp_path, tiny_llama_dir):
    model = tmp_path / "no-template"
    shutil.copytree(tiny_llama_dir, model, ignore=shutil.ignore_patterns("chat_template.jinja", "*.safetensors"))
    train = write_train(tmp_path)
    result = plan(make_spec(tmp_path, base_model=str(model), data={"train": train}))
    assert result.dataset.method == "counted"
    assert result.dataset.tokens == round(training_rows(str(model), train, 1024) * 0.9)  # eval_fraction 0.1 held out (no eval set)


def test_dataset_without_a_tokenizer_is_estimated(tmp_path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps({
        "model_type": "llama", "hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "intermediate_size": 256, "vocab_size": 1000,
    }))  # fmt: skip
    spec = make_spec(tmp_path, base_model=str(model_dir), data={"train": write_train(tmp_path, n=20), "eval": "s3://b/eval.jsonl"})
    result = plan(spec)
    # each example: 40 + 20 characters -> 60 // 4 = 15, + 4 per message x 2 = 23 tokens; 20 examples
    assert result.dataset.method == "estimated" and "characters / 4" in result.dataset.note
    assert result.dataset.tokens == 20 * 23


# --- check_fits ---------------------------------------------------------------------------------------------
def test_check_fits_refuses_a_job_too_big_for_the_requested_gpu(tmp_path):
    spec = make_spec(
        tmp_path,
        training={"micro_batch_size": 4, "max_seq_len": 2048, "gradient_checkpointing": "off"},
        compute={"accelerator": "H100:1"},
    )
    with pytest.raises(SpecError) as info:
        check_fits(spec)
    message = str(info.value)
    assert message.startswith("the job needs 1") and "GiB per GPU but an H100 has 79.2 GiB" in message
    assert "To fix: gradient_checkpointing: on" in message
    assert "micro_batch_size: 2" in message and "(H200)" in message
    assert info.value.exit_code == 2


def test_check_fits_passes_fitting_jobs_and_skips_what_it_cannot_judge(tmp_path):
    assert check_fits(make_spec(tmp_path, compute={"accelerator": "H100:1"})) is not None
    assert check_fits(make_spec(tmp_path, compute={"instance_type": "ml.g6e.xlarge"}, method="qlora")) is not None
    assert check_fits(make_spec(tmp_path)) is None  # no GPU requested
    assert check_fits(make_spec(tmp_path, base_model="acme/unknown", compute={"accelerator": "A10G"})) is None
    with pytest.raises(SpecError, match="an A10G has 22.0 GiB.*To fix: .*method: qlora"):
        check_fits(make_spec(tmp_path, compute={"instance_type": "ml.g5.xlarge"}))


# --- CLI --------------------------------------------------------------------------------------------------
def test_cli_prints_memory_and_instance_tables(tmp_path):
    path = write_spec(tmp_path, f"""\
        name: big
        base_model: {LLAMA3_8B}
        data:
          train: s3://bucket/train.jsonl
        training:
          micro_batch_size: 8
          max_seq_len: 2048
          fast_path: "off"
        compute:
          accelerator: A10G:1
        """)
    result = runner.invoke(app, ["plan", path, "--tokens", "2000000"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    out = result.output
    for text in ("base weights", "LoRA adapters", "logits and loss", "total, checkpointing on"):
        assert text in out
    assert "ml.p5.4xlarge" in out and "a3-highgpu-1g" in out and "NO" in out
    assert "the requested A10G:1 does not fit" in out and "an A10G has 22.0 GiB" in out
    assert "as of 2025-06-01" in out


def test_cli_json(tmp_path):
    path = write_spec(tmp_path, """\
        name: small
        base_model: Qwen/Qwen2.5-0.5B
        data:
          train: gs://bucket/train.jsonl
        compute:
          instance_type: g2-standard-4
        """)
    result = runner.invoke(app, ["plan", path, "--json", "--tokens", "1000000"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    # Qwen2.5-0.5B: h 896, q 14 x 64 = 896, kv 2 x 64 = 128, i 4864; 24 layers, r 16
    per_layer = (896 + 896) + 2 * (896 + 128) + (896 + 896) + 3 * (896 + 4864)  # q, k and v, o, gate/up/down
    assert data["memory"]["lora_params"] == 24 * 16 * per_layer == 8_798_208
    requested = [c for c in data["candidates"] if c["requested"]]
    assert [c["instance_type"] for c in requested] == ["g2-standard-4"] and requested[0]["fits"]
    assert requested[0]["on_demand_cost"] == pytest.approx(requested[0]["hours"] * 0.81)
    assert data["dataset"] == {"tokens": 1_000_000, "examples": None, "method": "given", "note": "from --tokens"}


def test_cli_remote_data_without_tokens_says_so(tmp_path):
    path = write_spec(tmp_path, """\
        name: remote
        base_model: tiny-llama
        data:
          train: s3://bucket/train.jsonl
        """)
    result = runner.invoke(app, ["plan", path], catch_exceptions=False)
    assert result.exit_code == 0
    assert "is remote and is not read here" in result.output and "--tokens N" in result.output


@pytest.mark.parametrize(
    ("spec_text", "expected"),
    [
        ("name: x\nbase_model: acme/Nope-7B\ndata:\n  train: s3://b/t.jsonl\n", "Error: base_model 'acme/Nope-7B' is not in launcher's model catalog"),
        ("name: x\nbase_model: ./missing-model\ndata:\n  train: s3://b/t.jsonl\n", "Error: base model folder './missing-model' does not exist"),
        ("name: x\ndata:\n  train: does-not-exist.jsonl\n", "Error: dataset"),
        ("name: x\ndata:\n  train: s3://b/t.jsonl\ntraining:\n  target_modules: [qproj]\n", "Did you mean 'q_proj'?"),
    ],
)
def test_cli_bad_input_exits_2(tmp_path, spec_text, expected):
    path = tmp_path / "job.yaml"
    path.write_text(spec_text)
    result = runner.invoke(app, ["plan", str(path)])
    assert result.exit_code == 2
    assert expected in result.output
    assert "Traceback" not in result.output


def test_cli_missing_spec_and_bad_tokens_exit_2(tmp_path):
    result = runner.invoke(app, ["plan", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2 and "Error: job spec" in result.output and "does not exist" in result.output
    path = write_spec(tmp_path, "name: x\ndata:\n  train: s3://b/t.jsonl\n")
    result = runner.invoke(app, ["plan", path, "--tokens", "0"])
    assert result.exit_code == 2 and "--tokens 0 must be a positive number" in result.output


def test_import_plan_stays_light():
    # Only what the import itself loads: google-cloud-aiplatform's *-nspkg.pth puts the bare 'google' and
    # 'google.cloud' namespaces in sys.modules at interpreter start-up.
    code = (
        "import sys; before = set(sys.modules); import launcher.plan, launcher.cli.plan; "
        "print(sorted(m for m in set(sys.modules) - before if m.split('.')[0] in ('torch', 'transformers', 'boto3', 'google')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_max_steps_caps_the_training_tokens(tmp_path):
    # 10 steps x micro-batch 4 x accumulation 4 x 1,024-token packed rows, below 3 epochs x 1,000,000: a step is
    # the same rows on any number of GPUs (they share it), so eight GPUs train the same tokens, sooner.
    spec = make_spec(tmp_path, training={"max_steps": 10, "micro_batch_size": 4, "gradient_accumulation_steps": 4, "max_seq_len": 1024})
    rows = {c.instance_type: c for c in plan(spec, dataset_tokens=1_000_000).candidates}
    assert rows["ml.p5.4xlarge"].training_tokens == 10 * 4 * 4 * 1 * 1024 == 163_840
    assert rows["ml.p5.48xlarge"].training_tokens == 163_840 and rows["ml.p5.48xlarge"].hours < rows["ml.p5.4xlarge"].hours


def test_fast_path_needs_only_one_example_to_fit(tmp_path):
    """On a GPU the entrypoint's fast path sizes micro-batches from measured memory, so a micro-batch the
    standard path could not hold is no reason to refuse; QLoRA is timed without checkpointing where one
    example fits without it (the run keeps every layer within the standard path's memory)."""
    big = {"micro_batch_size": 16, "max_seq_len": 4096}
    with pytest.raises(SpecError):
        check_fits(make_spec(tmp_path, training={**big, "fast_path": "off"}, compute={"accelerator": "H100:1"}))
    assert check_fits(make_spec(tmp_path, training={**big, "fast_path": "auto"}, compute={"accelerator": "H100:1"})) is not None
    qlora = plan(make_spec(tmp_path, method="qlora", training={"fast_path": "auto"}), dataset_tokens=1_000_000)
    rows = {c.gpu: c for c in qlora.candidates}
    assert not rows["H100"].gradient_checkpointing and rows["H100"].throughput_source.startswith("scaled from H200")


def test_a_model_no_gpu_holds_is_planned_sharded_over_a_multi_gpu_instance(tmp_path):
    """Llama-3-70B in bf16 (141 GB of weights) fits no single GPU; FSDP over eight H100s holds it, and plan
    proposes and prices that, while DDP's replica per GPU would not fit."""
    spec = make_spec(tmp_path, base_model="meta-llama/Meta-Llama-3-70B", compute={"accelerator": "H100:8"})
    result = plan(spec, dataset_tokens=2_000_000)
    rows = {(c.cloud, c.instance_type): c for c in result.candidates}
    eight = rows[("sagemaker", "ml.p5.48xlarge")]
    assert eight.fits and eight.strategy == "fsdp" and "FSDP over 8 GPUs" in eight.reason and eight.on_demand_cost > 0
    assert eight.memory_needed < result.memory.total(True)  # the sharded weights, not the whole model, per GPU
    assert not rows[("sagemaker", "ml.p5.4xlarge")].fits  # one H100
    assert any(n.startswith("one GPU is not enough for this job:") and "with FSDP" in n for n in result.notes)
    check_fits(spec)  # the requested 8 x H100 is fine
    with pytest.raises(SpecError, match="needs .* GiB per GPU but an H100"):
        check_fits(make_spec(tmp_path, base_model="meta-llama/Meta-Llama-3-70B", compute={"accelerator": "H100:1"}))
