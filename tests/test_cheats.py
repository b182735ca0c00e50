import pytest

from node.pipeline.model import ModelConfig
from node.pipeline.tiny import tiny_model_dir
from node.pipeline.weights import load_stage
from node.worker.cheats import Cheat, CheatError


def test_perturb_changes_every_weight_by_about_the_scale(tmp_path):
    model_dir = tiny_model_dir("llama", seed=3, path=tmp_path / "m")
    layers = ModelConfig.from_dir(model_dir).num_layers
    honest = load_stage(model_dir, 0, layers)
    cheating = load_stage(model_dir, 0, layers)
    Cheat.parse("perturb:1e-3").apply(cheating)
    for (name, a), (_, b) in zip(honest.named_parameters(), cheating.named_parameters()):
        relative = ((b - a).abs() / a.abs().clamp_min(1e-12)).median().item()
        assert 1e-4 < relative < 1e-2, name


@pytest.mark.parametrize("text", ["lie", "perturb:x", "perturb:-1"])
def test_bad_cheats_are_refused(text):
    with pytest.raises(CheatError):
        Cheat.parse(text)


@pytest.mark.parametrize("text, zeros", [("int4:32", False), ("sparse-2-4", True)])
def test_cheaper_weights_replace_every_matrix_of_the_decoder_layers_only(tmp_path, text, zeros):
    import torch

    model_dir = tiny_model_dir("llama", seed=3, path=tmp_path / "m")
    layers = ModelConfig.from_dir(model_dir).num_layers
    honest = load_stage(model_dir, 0, layers)
    cheating = load_stage(model_dir, 0, layers)
    Cheat.parse(text).apply(cheating)
    for (name, a), (_, b) in zip(honest.named_parameters(), cheating.named_parameters()):
        changed = not torch.equal(a, b)
        assert changed == (name.startswith("layers.") and a.dim() == 2), name
        if changed and zeros:
            assert (b.view(b.shape[0], -1, 4) == 0).sum(-1).ge(2).all(), name


def test_int4_needs_a_whole_group_size():
    with pytest.raises(CheatError):
        Cheat.parse("int4:12.5")
    assert Cheat.parse("int4").scale == 128
