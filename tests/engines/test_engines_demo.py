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
