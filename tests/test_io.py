

def test_write_safetensors_matches_the_library(tmp_path):
    """nnslim's tensor-by-tensor writer writes files safetensors reads back exactly, every dtype nnslim stores,
    including empty and 0-d tensors."""
    import torch
    from safetensors.torch import load_file

    from nnslim.io import write_safetensors

    g = torch.Generator().manual_seed(0)
    tensors = {"bf16": torch.randn(3, 5, generator=g).to(torch.bfloat16), "f32": torch.randn(7, generator=g),
               "f16": torch.randn(2, 2, generator=g).half(), "i32": torch.randint(-9, 9, (4, 3), dtype=torch.int32),
               "i64": torch.tensor([11008, 4096]), "u8": torch.randint(0, 255, (5,), dtype=torch.uint8),
               "i8": torch.randint(-9, 9, (3,), dtype=torch.int8), "fp8": torch.randn(4, generator=g).to(torch.float8_e4m3fn),
               "bool": torch.tensor([True, False, True]), "empty": torch.zeros(0, 4), "scalar": torch.tensor(3.5),
               "view": torch.arange(12.0).reshape(3, 4)[:, 1]}
    write_safetensors(tmp_path / "a.safetensors", tensors, metadata={"format": "pt"})
    back = load_file(str(tmp_path / "a.safetensors"))
    assert back.keys() == tensors.keys()
    for k, t in tensors.items():
        assert back[k].dtype == t.dtype and back[k].shape == t.shape and torch.equal(back[k].float(), t.float()), k
