"""BENCHMARKS.md 7h: int4 RTN on small random models of more mixture-of-experts families than tests/hf_zoo.py holds.

  python benchmarks/moe_families.py [FAMILY ...]

Each family is built from its transformers config (2 layers, 4 experts, top 2), saved, compressed by
`nnslim.compress(DIR, [{"method": "int4-rtn"}])`, loaded back; prints how many experts blocks were fused, split and
quantized, and whether the reloaded artifact's logits equal the in-memory model's. A family whose tiny config
transformers cannot build is printed as such (not nnslim's failure).
"""
import os
import shutil
import sys
import tempfile
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
import transformers as tf  # noqa: E402

import nnslim  # noqa: E402
from nnslim.errors import NnslimError  # noqa: E402
from nnslim.graph.experts import fused_experts  # noqa: E402
d = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=30522)
fams = {
 "olmoe": lambda: (tf.OlmoeConfig(num_experts=4, num_experts_per_tok=2, **d), tf.OlmoeForCausalLM),
 "deepseek_v3": lambda: (tf.DeepseekV3Config(n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, n_shared_experts=1, first_k_dense_replace=1, kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16, n_group=1, topk_group=1, **d), tf.DeepseekV3ForCausalLM),
 "deepseek_v2": lambda: (tf.DeepseekV2Config(n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, n_shared_experts=1, first_k_dense_replace=1, kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16, **d), tf.DeepseekV2ForCausalLM),
 "granitemoe": lambda: (tf.GraniteMoeConfig(num_local_experts=4, num_experts_per_tok=2, **d), tf.GraniteMoeForCausalLM),
 "phimoe": lambda: (tf.PhimoeConfig(num_local_experts=4, num_experts_per_tok=2, **d), tf.PhimoeForCausalLM),
 "glm4_moe": lambda: (tf.Glm4MoeConfig(n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, first_k_dense_replace=1, n_group=1, topk_group=1, **d), tf.Glm4MoeForCausalLM),
 "ernie4_5_moe": lambda: (tf.Ernie4_5_MoeConfig(moe_num_experts=4, moe_k=2, moe_intermediate_size=32, **d), tf.Ernie4_5_MoeForCausalLM),
 "dots1": lambda: (tf.Dots1Config(head_dim=16, n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, first_k_dense_replace=1, **d), tf.Dots1ForCausalLM),
 "hunyuan_moe": lambda: (tf.HunYuanMoEV1Config(num_experts=4, moe_topk=2, **d), tf.HunYuanMoEV1ForCausalLM),
 "minimax": lambda: (tf.MiniMaxConfig(num_local_experts=4, num_experts_per_tok=2, layer_types=["full_attention","full_attention"], **d), tf.MiniMaxForCausalLM),
 "qwen3_next": lambda: (tf.Qwen3NextConfig(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, layer_types=["full_attention","full_attention"], head_dim=16, **d), tf.Qwen3NextForCausalLM),
 "lfm2_moe": lambda: (tf.Lfm2MoeConfig(layer_types=["full_attention", "full_attention"], num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, num_dense_layers=1, **d), tf.Lfm2MoeForCausalLM),
 "flex_olmo": lambda: (tf.FlexOlmoConfig(pad_token_id=0, eos_token_id=102, num_experts=4, num_experts_per_tok=2, **d), tf.FlexOlmoForCausalLM),
}
want = sys.argv[1:] or list(fams)
import json  # noqa: E402

for name in want:
    root = tempfile.mkdtemp()
    try:
        try:
            cfg, cls = fams[name]()
            torch.manual_seed(0)
            m = cls(cfg).eval()
        except Exception as e:  # noqa: BLE001
            print(f"ROW {name}: transformers cannot build this tiny config ({type(e).__name__}: {str(e)[:120]})")
            continue
        n_fused = len(fused_experts(m))
        m.save_pretrained(root + "/src")
        from hf_zoo import _tokenizer_files
        _tokenizer_files(Path(root + "/src"))
        res = nnslim.compress(root + "/src", [{"method": "int4-rtn"}], out=root + "/q", report=False)
        back = nnslim.load(root + "/q")
        ids = torch.randint(0, 30522, (1, 9))
        with torch.no_grad():
            same = torch.equal(back(ids), res.model(ids))
        meta = json.load(open(root + "/q/nnslim.json"))
        nq = len([k for k in meta.get("quantized_layers", {}) if ".experts." in k])
        print(f"ROW {name}: fused={n_fused} split={len(meta.get('split_experts', []))} expert_layers_quantized={nq} reload_equal={same}")
    except NnslimError as e:
        print(f"ROW {name}: NnslimError {str(e)[:300]}")
    except Exception as e:
        print(f"ROW {name}: CRASH {type(e).__name__}: {str(e)[:300]}")
        traceback.print_exc(limit=5)
    finally:
        shutil.rmtree(root, ignore_errors=True)
