"""launcher.memory: the memory model against hand-computed cases and H200 measurements, and the runtime
policy (fast path, checkpointing) that the training entrypoint and launcher plan share."""

from __future__ import annotations

import pytest

from launcher.errors import SpecError
from launcher.memory import GIB, estimate_memory, lora_param_count, nf4_bytes, runtime_policy
from launcher.plan import resolve_model
from launcher.spec import TrainConfig

LLAMA3_8B = "meta-llama/Meta-Llama-3-8B"


# --- memory model -------------------------------------------------------------------------------------
def test_lora_parameter_count_llama3_8b_r16_all_linear():
    # per layer, r x (in + out): q 16x(4096+4096)=131,072; k and v 16x(4096+1024)=81,920 each; o 131,072;
    # gate, up, down 16x(4096+14336)=294,912 each -> 1,310,720 per layer x 32 layers
    assert lora_param_count(resolve_model(LLAMA3_8B), TrainConfig(lora_r=16)) == 1_310_720 * 32 == 41_943_040
    # only q and v: 32 x 16 x ((4096+4096) + (4096+1024)) = 6,815,744
    assert lora_param_count(resolve_model(LLAMA3_8B), TrainConfig(target_modules=["q_proj", "v_proj"])) == 6_815_744


def test_lora_parameter_count_phi3_fused_projections():
    # qkv_proj 16x(3072+9216)=196,608; o 16x(3072+3072)=98,304; gate_up 16x(3072+16384)=311,296;
    # down 16x(8192+3072)=180,224 -> 786,432 per layer x 32
    assert lora_param_count(resolve_model("microsoft/Phi-3-mini-4k-instruct"), TrainConfig()) == 25_165_824


def test_target_module_that_the_model_lacks_is_an_error():
    with pytest.raises(SpecError, match="'qkv_proj' is not a linear layer of meta-llama/Meta-Llama-3-8B.*q_proj, k_proj"):
        estimate_memory(resolve_model(LLAMA3_8B), TrainConfig(target_modules=["qkv_proj"]))


def test_lora_weights_and_state_bytes():
    memory = estimate_memory(resolve_model(LLAMA3_8B), TrainConfig())
    assert memory.weights == 8_030_261_248 * 2 == 16_060_522_496  # bf16
    assert memory.lora_state == 41_943_040 * 16  # fp32 weight + grad + AdamW m and v


def test_qlora_nf4_bytes():
    # One 4096x4096 matrix: 8,388,608 bytes of 4-bit codes, 262,144 blocks of 64 with an 8-bit absmax each,
    # 1,024 fp32 second-level constants (one per 256 blocks): 8,388,608 + 262,144 + 4,096
    assert nf4_bytes(4096 * 4096) == 8_654_848
    memory = estimate_memory(resolve_model(LLAMA3_8B), TrainConfig(method="qlora"))
    linear = 6_979_321_856  # 32 layers x (41,943,040 attention + 176,160,768 MLP)
    quantised = linear // 2 + linear // 64 + 4 * (linear // 64 // 256)  # 3,489,660,928 + 109,051,904 + 1,703,936
    rest = (8_030_261_248 - linear) * 2  # embeddings, lm_head, norms in bf16
    assert memory.weights == quantised + rest == 5_702_295_552


def test_fp8_adds_two_float8_copies_of_the_linear_weights():
    shape = resolve_model(LLAMA3_8B)
    plain, fp8 = (estimate_memory(shape, TrainConfig(fp8=value)) for value in ("off", "on"))
    assert fp8.weights - plain.weights == 2 * 6_979_321_856  # W and W.T, one byte each per linear parameter


def test_activation_terms_by_hand():
    # Llama-3-8B, micro-batch 8 x 2,048 = 16,384 tokens, lora_dropout 0
    memory = estimate_memory(resolve_model(LLAMA3_8B), TrainConfig(micro_batch_size=8, max_seq_len=2048, lora_dropout=0))
    tokens = 16_384
    assert memory.logits == tokens * (128_256 * 14 + 4 * 4096)  # logits x 14 B + the final norm's fp32 input
    assert memory.activations_checkpointed == tokens * 32 * 2 * 4096  # each layer's bf16 input: 4 GiB
    per_token_layer = (
        2 * 4 * 4096  # two RMSNorm inputs in fp32
        + 2 * (2 * 4096 + 2 * 1024)  # q, k, v, attention output in bf16
        + 3 * 2 * 14336  # gate, SiLU(gate), up
        + 4 * (6 * 4096 + 14336)  # LoRA inputs cast to fp32 (six modules read h, down_proj reads i)
        + 4 * 16 * 7  # lora_A outputs
    )
    assert per_token_layer == 295_360
    assert memory.activations_full == tokens * 32 * per_token_layer
    with_dropout = estimate_memory(resolve_model(LLAMA3_8B), TrainConfig(micro_batch_size=8, max_seq_len=2048, lora_dropout=0.05))
    assert with_dropout.activations_full - memory.activations_full == tokens * 32 * (6 * 4096 + 14336)  # 1-byte masks


# Peak torch.cuda.max_memory_allocated of plain transformers 5.17 + peft 0.21 + torch 2.11 LoRA (r=16, all linear)
# training steps on one H200, random weights, SDPA (2026-11): model, checkpointing, micro-batch, seq, dropout, GiB.
H200_PEAKS = [
    (LLAMA3_8B, "on", 8, 2048, 0.0, 47.14),
    (LLAMA3_8B, "off", 2, 2048, 0.0, 58.50),
    (LLAMA3_8B, "off", 1, 2048, 0.0, 37.00),
    (LLAMA3_8B, "on", 2, 2048, 0.0, 23.40),
    (LLAMA3_8B, "off", 1, 2048, 0.05, 39.37),
    (LLAMA3_8B, "on", 4, 2048, 0.05, 31.31),
    (LLAMA3_8B, "off", 1, 4096, 0.0, 58.51),
    ("Qwen/Qwen2.5-1.5B", "off", 4, 1024, 0.05, 28.83),
    ("Qwen/Qwen2.5-1.5B", "on", 8, 2048, 0.05, 37.01),
    ("Qwen/Qwen2.5-1.5B", "off", 2, 2048, 0.0, 26.94),
]


@pytest.mark.parametrize(("model", "checkpointing", "micro_batch", "seq", "dropout", "measured_gib"), H200_PEAKS)
def test_memory_model_reproduces_h200_measurements(model, checkpointing, micro_batch, seq, dropout, measured_gib):
    config = TrainConfig(micro_batch_size=micro_batch, max_seq_len=seq, lora_dropout=dropout)
    memory = estimate_memory(resolve_model(model), config)
    on = checkpointing == "on"
    allocated = memory.weights + memory.lora_state + memory.activations(on) + memory.logits
    assert allocated / GIB == pytest.approx(measured_gib, rel=0.01)
    assert memory.total(on) > measured_gib * GIB  # context and allocator margin on top


# --- runtime policy ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("fast_path", "device", "method", "checkpointing", "fast", "starts_checkpointed"),
    [
        ("auto", "cuda", "lora", "auto", True, False),  # LoRA checkpoints only if one example does not fit
        ("auto", "cuda", "qlora", "auto", True, True),  # QLoRA starts checkpointed, then keeps what fits
        ("auto", "cpu", "qlora", "auto", False, False),  # the CPU's standard path never checkpoints by itself
        ("on", "cpu", "qlora", "auto", True, True),
        ("off", "cuda", "lora", "auto", False, False),
        ("auto", "cuda", "qlora", "off", True, False),
        ("off", "cpu", "lora", "on", False, True),
    ],
)
def test_runtime_policy_decides_the_fast_path_and_the_starting_checkpointing(fast_path, device, method, checkpointing, fast, starts_checkpointed):
    config = TrainConfig(method=method, fast_path=fast_path, gradient_checkpointing=checkpointing, micro_batch_size=8)
    policy = runtime_policy(config, device)
    assert (policy.fast, policy.gradient_checkpointing) == (fast, starts_checkpointed)


def test_the_fast_path_must_fit_one_example_the_standard_path_its_rows():
    config = TrainConfig(micro_batch_size=8, max_seq_len=2048)
    fast = runtime_policy(config, "cuda").must_fit
    assert fast.micro_batch_size == 1 and fast.model_copy(update={"micro_batch_size": 8}) == config
    assert runtime_policy(config.model_copy(update={"fast_path": "off"}), "cuda").must_fit.micro_batch_size == 8
    shape = resolve_model(LLAMA3_8B)
    assert estimate_memory(shape, fast).micro_batch_tokens == 2048
