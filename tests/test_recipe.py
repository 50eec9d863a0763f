import pytest

from nnslim.errors import NnslimError
from nnslim.recipe import as_recipe, load_recipe, make_step, methods, parse_recipe


def test_registered_methods():
    assert {"fp16", "bf16", "onnx", "onnx-fp16"} <= set(methods())


def test_parse_list_and_mapping_forms():
    r = parse_recipe([{"method": "fp16"}])
    assert r.steps[0].method == "fp16" and r.seed == 0
    r = parse_recipe({"name": "x", "seed": 7, "steps": [{"method": "onnx", "opset": 17, "tolerance": 1}]})
    assert r.seed == 7 and r.steps[0].opset == 17 and r.steps[0].tolerance == 1.0
    assert r.to_dict()["steps"][0] == {"method": "onnx", "opset": 17, "check": True, "tolerance": 1.0, "past": True}


@pytest.mark.parametrize("spec,match", [
    ([{"method": "int3"}], r"method='int3' is not allowed; did you mean 'int8'\? allowed: .*fp16"),
    ([{"method": "onnx", "opsett": 17}], r"unknown key 'opsett' for method 'onnx'; did you mean 'opset'\? allowed: check, opset, past, tolerance"),
    ([{"method": "fp16", "x": 1}], r"unknown key 'x' for method 'fp16'; allowed: \(none"),
    ([{"method": "onnx", "opset": "17"}], r"steps\[0\]\.opset='17' has the wrong type; expected int"),
    ([{"method": "onnx", "check": 1}], r"check=1 has the wrong type; expected bool"),
    ([{"method": "onnx", "opset": 9}], r"opset=9 is not allowed; allowed: 13..23"),
    ([{"opset": 9}], r"missing key 'method'"),
    (["fp16"], r"must be a mapping"),
    ([], r"non-empty list"),
    ({"steps": [{"method": "fp16"}], "sed": 1}, r"unknown key 'sed'; did you mean 'seed'\? allowed: name, seed, steps"),
    ({"steps": [{"method": "fp16"}], "seed": "a"}, r"seed='a' has the wrong type"),
    (42, r"must be a list of steps"),
])
def test_bad_recipes_name_the_field(spec, match):
    with pytest.raises(NnslimError, match=match):
        parse_recipe(spec)


def test_yaml_files(tmp_path):
    good = tmp_path / "r.yaml"
    good.write_text("seed: 3\nsteps:\n  - method: fp16\n")
    assert load_recipe(good).seed == 3
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: [method: fp16\n")
    with pytest.raises(NnslimError, match="not valid YAML"):
        load_recipe(bad)
    with pytest.raises(NnslimError, match="file not found"):
        load_recipe(tmp_path / "missing.yaml")


def test_as_recipe_accepts_names_configs_and_seed_override():
    step = make_step({"method": "bf16"})
    assert as_recipe(step).steps == (step,)
    assert as_recipe("fp16", seed=5).seed == 5
    assert as_recipe([step, make_step({"method": "onnx"})]).steps[1].method == "onnx"


def test_yaml_keeps_n_m_patterns_as_text():
    from nnslim.recipe import yaml_load

    obj = yaml_load("pattern: 2:4\nsamples: 8\ndamp: 0.01\nsmall: 1e-3\nneg: -2\nname: x\nflag: true\n")
    assert obj == {"pattern": "2:4", "samples": 8, "damp": 0.01, "small": 0.001, "neg": -2, "name": "x",
                   "flag": True}


def test_yaml_scalars_that_are_not_numbers():
    from nnslim.recipe import yaml_load

    for text in (".", ".e5", "1__", "._", "-.", "+", "_1", "1_", "e5", ".e"):
        assert isinstance(yaml_load(text), str), text  # never a crash in float()/int()
    assert yaml_load("1_000") == 1000 and yaml_load("1e-3") == 0.001 and yaml_load("2:4") == "2:4"


def test_example_recipes_parse_and_compose():
    from pathlib import Path

    import torch

    from nnslim.pipeline import check_recipe, check_trained

    for path in sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml")):
        recipe = load_recipe(path)
        check_recipe(recipe, torch.nn.Linear(2, 2))
        check_trained(recipe)


def test_verbs_take_a_method_name_or_mapping_like_compress():
    import torch

    import nnslim

    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    calib = [torch.randn(4, 16)]
    assert type(nnslim.quantize(model, "int4-rtn", calibration=calib)[0]).__name__ == "WeightOnlyLinear"
    pruned = nnslim.prune(model, {"method": "prune-magnitude", "sparsity": 0.7}, calibration=calib)
    assert abs(float((pruned[0].weight == 0).float().mean()) - 0.7) < 0.02
    with pytest.raises(NnslimError, match="did you mean 'int4-rtn'"):
        nnslim.quantize(model, "int4-rtm", calibration=calib)
    with pytest.raises(NnslimError, match="not allowed for nnslim.quantize"):
        nnslim.quantize(model, "prune-magnitude", calibration=calib)


def test_one_step_mapping_is_a_recipe():
    recipe = as_recipe({"method": "lowrank", "rank_ratio": 0.5})
    assert len(recipe.steps) == 1 and recipe.steps[0].rank_ratio == 0.5
    assert len(as_recipe({"steps": [{"method": "int8"}], "seed": 3}).steps) == 1


def test_generate_of_a_module_without_a_tokenizer_says_what_to_give():
    import torch

    import nnslim

    with pytest.raises(NnslimError, match="generate of a Linear object needs its tokenizer"):
        nnslim.generate(torch.nn.Linear(4, 4), "hello", 3)
