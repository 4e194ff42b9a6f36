"""TrainConfig in groups: every field documented in one group, flat and earlier names working everywhere."""
import dataclasses
import inspect

import pytest

from minigpt.config import RENAMED_TRAIN_FIELDS, TRAIN_GROUPS, TrainConfig
from minigpt.params import Params, load_params, registry


def test_groups_partition_the_fields_and_each_field_says_what_it_does():
    seen = set()
    for name, cls in TRAIN_GROUPS.items():
        src = inspect.getsource(cls)
        for f in dataclasses.fields(cls):
            assert f.name not in seen, f.name
            seen.add(f.name)
            line = next(l for l in src.splitlines() if l.strip().startswith(f"{f.name}:"))
            assert "  # " in line, f"{name}.{f.name} has no comment"
    assert len(seen) == len(TrainConfig.FIELD_GROUPS) >= 55
    assert {f.name for f in dataclasses.fields(TrainConfig)} == set(TRAIN_GROUPS)


def test_flat_and_grouped_access_agree():
    cfg = TrainConfig(learning_rate=2e-3, warmup_steps=7, save_interval=30, max_cpu=70.0)
    assert (cfg.optim.learning_rate, cfg.schedule.warmup_steps, cfg.checkpoints.save_interval) == (2e-3, 7, 30)
    assert (cfg.learning_rate, cfg.warmup_steps, cfg.guard.max_cpu) == (2e-3, 7, 70.0)
    cfg.save_interval = 11
    assert cfg.checkpoints.save_interval == 11
    assert TrainConfig.from_flat(**cfg.to_flat()) == cfg == TrainConfig.from_dict(cfg.to_nested())
    changed = dataclasses.replace(cfg, max_steps=9)
    assert changed.schedule.max_steps == 9 and cfg.schedule.max_steps == 200  # replace leaves the original alone


@pytest.mark.parametrize("old,new,value", [("save_steps", "save_interval", 25), ("dynamic_seq_length", "context_growth", True),
                                           ("min_seq_length", "context_growth_from", 8), ("max_seq_length", "context_growth_to", 32),
                                           ("disable_optimizations", "disable_speedups", True), ("max_grad_norm", "grad_clip", 0.5)])
def test_earlier_names_work_everywhere(old, new, value):
    assert RENAMED_TRAIN_FIELDS[old] == new
    cfg = TrainConfig(**{old: value})
    assert getattr(cfg, new) == value and getattr(cfg, old) == value
    assert TrainConfig.from_flat(**{old: value}).to_flat()[new] == value
    P = load_params("pretrain", config="ci", **{old: value})
    assert P[new] == value and getattr(P, old) == value and P.get(old) == value and old not in registry("pretrain")
    assert P.build(TrainConfig).to_flat()[new] == value


def test_an_earlier_and_a_current_name_must_agree():
    assert TrainConfig(save_steps=5, save_interval=5).save_interval == 5
    with pytest.raises(ValueError, match="save_steps: earlier name of save_interval"):
        TrainConfig(save_steps=5, save_interval=6)
    with pytest.raises(TypeError, match="save_stepz"):
        TrainConfig(save_stepz=5)


def test_params_store_earlier_names_under_the_current_key():
    P = Params(save_steps=3, learning_rate=1e-3)
    P["disable_optimizations"] = True
    assert dict(P) == {"save_interval": 3, "learning_rate": 1e-3, "disable_speedups": True}
    P.update(save_steps=4)
    assert P.save_interval == 4 and P["save_steps"] == 4


def test_validation_names_the_current_and_the_earlier_key():
    with pytest.raises(ValueError, match=r"save_interval \(save_steps\): expected a positive integer"):
        TrainConfig(save_interval=0).validate()
    with pytest.raises(ValueError, match=r"context_growth_from \(min_seq_length\)"):
        TrainConfig(context_growth=True, context_growth_from=64, context_growth_to=32).validate()
