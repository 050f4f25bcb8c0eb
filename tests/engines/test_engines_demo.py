import torch


def test_v2_starts_from_v1_weights(tiny_specs):
    """build_demo's V2 (Qwen2 layout, hybrid) starts from V1's trained weights: every V1 tensor
    is copied, the q/k/v biases V1 lacks stay zero."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    from engines.demo import _init_from

    v1_dir = tiny_specs["v1-fp32"].checkpoint
    cfg = AutoConfig.from_pretrained(tiny_specs["v2-fp32"].checkpoint, local_files_only=True)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    _init_from(model, __import__("pathlib").Path(v1_dir))
    src = load_file(f"{v1_dir}/model.safetensors")
    state = model.state_dict()
    for k, v in src.items():
        assert torch.equal(state[k], v), k
    biases = [k for k in state if k.endswith(("q_proj.bias", "k_proj.bias", "v_proj.bias"))]
    assert biases and all(not state[k].any() for k in biases)


def test_bigram_init_makes_the_network_the_factorised_bigram_model():
    """At initialisation the whole network computes logits = g * norm(U S^1/2 R [a]) @ (V S^1/2 R)^T:
    residual branches are silent, and its next-token loss on the corpus beats the unigram's."""
    import math
    from dataclasses import replace

    from transformers import AutoModelForCausalLM

    from engines.demo import DEMO, bigram_init, make_config

    size = replace(DEMO, hidden=64, intermediate=128, layers=2, heads=4, kv_heads=2, bigram_rank=32)
    vocab = 64
    g = torch.Generator().manual_seed(0)
    # a corpus with strong bigram structure: b follows a as (a * 7 + noise) % vocab
    a = torch.randint(0, vocab, (1,), generator=g)
    stream = [int(a)]
    for _ in range(20_000):
        stream.append((stream[-1] * 7 + int(torch.randint(0, 3, (1,), generator=g))) % vocab)
    stream = torch.tensor(stream)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(make_config("dense", size, vocab), dtype=torch.float32).eval()
    info = bigram_init(model, stream, size)
    x = stream[:257].unsqueeze(0)
    with torch.no_grad():
        logits = model(input_ids=x).logits[0]
        h = model.get_input_embeddings().weight[x[0]]
        expected = (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-5) * model.model.norm.weight) \
            @ model.get_output_embeddings().weight.T
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)
    assert info["rank"] == 32 and info["nll"] < 0.5 * math.log(vocab)  # unigram: log(vocab)
