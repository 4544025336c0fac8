"""Host time of one eager decode step of Hugging Face ``transformers`` (Llama), per layer.

Run on a GPU machine: ``python experiments/device/eager_decode.py``. A Llama whose kernels are all
tiny (hidden 256, 8 or 16 layers, random weights, fp16, batch 1) is decoded greedily for 128 tokens
with ``generate`` in eager mode; its GPU work is negligible, so the time per token is the host's:
launching every op from Python. The slope between 8 and 16 layers is the host time per layer, the
figure behind ``costmodels.inference.ENGINES["pytorch-eager"]``.
"""

import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def per_token_s(layers: int, new_tokens: int = 128) -> float:
    config = LlamaConfig(
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocab_size=1024,
    )
    model = LlamaForCausalLM(config).to("cuda", torch.float16).eval()
    prompt = torch.randint(0, 1024, (1, 16), device="cuda")

    def run(n: int) -> float:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.no_grad():
            model.generate(prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False)
        torch.cuda.synchronize()
        return time.perf_counter() - t0

    run(8)
    best = min(run(new_tokens) - run(1) for _ in range(3))
    return best / (new_tokens - 1)


def main() -> None:
    import transformers

    t8, t16 = per_token_s(8), per_token_s(16)
    device = torch.cuda.get_device_name()
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {device}")
    print(f"per token: 8 layers {t8 * 1e3:.3f} ms, 16 layers {t16 * 1e3:.3f} ms")
    per_layer, rest = (t16 - t8) / 8, 2 * t8 - t16
    print(f"host time per layer: {per_layer * 1e6:.1f} us; outside the layers: {rest * 1e6:.1f} us")


if __name__ == "__main__":
    main()
