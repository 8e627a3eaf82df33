import re
import shutil

import pytest
import yaml
from pydantic import BaseModel

from moft.config import (
    DEFAULT_PROFILE,
    PROJECT_ROOT,
    ConfigError,
    MoftConfig,
    available_profiles,
    load_config,
    reference,
    validate_tree,
)

PROFILES = sorted(p.stem for p in (PROJECT_ROOT / "configs").glob("*.yaml"))


@pytest.fixture(autouse=True)
def isolated_cwd(tmp_path, monkeypatch):
    """Run from an empty directory: no ./params.yaml of the project leaks into these tests, and
    profiles come from the project's own configs/."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def load(*overrides: str, profile: str = DEFAULT_PROFILE) -> MoftConfig:
    return load_config(profile, list(overrides))


def config_error(*overrides: str, profile: str = DEFAULT_PROFILE) -> str:
    with pytest.raises(ConfigError) as info:
        load(*overrides, profile=profile)
    return str(info.value)


# ------------------------------------------------------------------------------------------------
# profiles


def test_available_profiles_are_the_project_configs():
    assert available_profiles() == PROFILES
    assert DEFAULT_PROFILE in PROFILES
    assert len(PROFILES) >= 2


@pytest.mark.parametrize("name", PROFILES)
def test_every_profile_loads(name):
    cfg = load_config(name)
    assert cfg.profile == name
    assert cfg.description
    assert len(cfg.objectives) >= 2
    assert cfg.data.paths
    assert len({o.column for o in cfg.objectives}) == len(cfg.objectives)


def test_extending_profile_inherits_data_and_replaces_objectives():
    parent, child = load_config("ltr-mslr"), load_config("ltr-mslr-m5")
    assert child.data == parent.data
    assert len(child.objectives) == 5 and len(parent.objectives) == 2


def test_unknown_profile_lists_available():
    with pytest.raises(ConfigError, match="unknown profile 'no-such-profile'") as info:
        load_config("no-such-profile")
    for name in PROFILES:
        assert name in str(info.value)


def test_local_configs_dir_wins_and_extends_cycles_are_caught(isolated_cwd):
    configs = isolated_cwd / "configs"
    configs.mkdir()
    shutil.copy(PROJECT_ROOT / "configs" / "ltr-letor.yaml", configs / "mine.yaml")
    (configs / "child.yaml").write_text("extends: mine\ndescription: child of mine\n")
    (configs / "loop-a.yaml").write_text("extends: loop-b\n")
    (configs / "loop-b.yaml").write_text("extends: loop-a\n")
    assert available_profiles() == ["child", "loop-a", "loop-b", "mine"]
    child = load_config("child")
    assert child.description == "child of mine"
    assert child.data.comment_fields == ["inc", "prob"]
    with pytest.raises(ConfigError, match="extends itself"):
        load_config("loop-a")


# ------------------------------------------------------------------------------------------------
# overrides


def test_overrides_change_values_with_yaml_types():
    cfg = load(
        "base.optim.seed=3",
        "finetune.hyperdpo.alpha=0.25",
        "finetune.hyperdpo.alpha=[0.5, 2]",  # later wins
        "evaluate.beta_scales=[0.5, 2]",
        "tracking.enabled=false",
        "finetune.hyperdpo.conditioning=concat",
    )
    assert cfg.base.optim.seed == 3
    assert cfg.finetune.hyperdpo.alpha == [0.5, 2.0]
    assert cfg.evaluate.beta_scales == [0.5, 2.0]
    assert cfg.tracking.enabled is False
    assert cfg.finetune.hyperdpo.conditioning == "concat"
    assert load().base.optim.seed == 0  # the profile itself is untouched


def test_data_path_shorthand_replaces_paths():
    assert len(load().data.paths) == 2
    cfg = load("data.path=/some/other/letor.txt")
    assert cfg.data.paths == ["/some/other/letor.txt"]


def test_list_index_override_changes_one_objective():
    before = load()
    cfg = load("objectives.0.transform=log1p", "objectives.1.beta=0.5")
    assert cfg.objectives[0].transform == "log1p"
    assert cfg.objectives[0].name == before.objectives[0].name
    assert cfg.objectives[1].beta == 0.5
    assert cfg.objectives[1].transform == before.objectives[1].transform


def test_objective_can_read_a_declared_comment_field():
    cfg = load("objectives.0.comment_field=inc", "objectives.0.feature=null", profile="ltr-letor")
    assert cfg.objectives[0].source_column == "c_inc"


@pytest.mark.parametrize(
    "override, pattern",
    [
        ("objectives.7.transform=log1p", r"'objectives\.7' is not an index of a list of 2"),
        ("objectives.x.transform=log1p", r"'objectives\.x' is not an index"),
        ("profile.x=1", r"'profile' is not a section"),
        ("base.optim.seed", r"must look like dotted\.key=value"),
        ("llm.prefix.item={name}{weight}", r"the value of llm\.prefix\.item is not valid YAML.*quote it"),
    ],
)
def test_malformed_overrides_are_named(override, pattern):
    assert re.search(pattern, config_error(override))


# ------------------------------------------------------------------------------------------------
# validation errors


@pytest.mark.parametrize(
    "override, field",
    [
        ("base.optim.epohcs=3", "base.optim.epohcs"),
        ("colour=red", "colour"),
        ("objectives.0.colour=red", "objectives.0.colour"),
    ],
)
def test_unknown_key_is_named_with_allowed_keys(override, field):
    message = config_error(override)
    assert f"'{field}'" in message
    assert "unknown key" in message
    allowed = message.split("allowed keys:")[1]
    expected = {
        "base.optim.epohcs": ["batch_groups", "epochs", "lr", "patience", "seed"],
        "colour": ["base", "data", "evaluate", "finetune", "objectives"],
        "objectives.0.colour": ["beta", "direction", "feature", "label_norm", "name", "transform"],
    }[field]
    for key in expected:
        assert key in allowed


@pytest.mark.parametrize(
    "override, pattern",
    [
        ("evaluate.k=ten", r"'evaluate\.k'.*valid integer.*'ten'"),
        ("base.optim.epochs=1.5", r"'base\.optim\.epochs'.*integer"),
        ("base.optim.lr=fast", r"'base\.optim\.lr'.*valid number"),
        ("objectives.0.transform=sqrt", r"'objectives\.0\.transform'.*'identity', 'log1p'.*'sqrt'"),
        ("tracking.enabled=[1]", r"'tracking\.enabled'.*boolean"),
    ],
)
def test_wrong_type_is_named(override, pattern):
    assert re.search(pattern, config_error(override))


@pytest.mark.parametrize("alpha", ["-1", "0", "[0.5, -0.1]", ".nan"])
def test_dirichlet_concentration_must_be_positive(alpha):
    message = config_error(f"finetune.hyperdpo.alpha={alpha}")
    assert "'finetune.hyperdpo.alpha'" in message and "must be > 0" in message


def test_alpha_list_length_must_match_objectives():
    assert "alpha has 3 values for 2 objectives" in config_error("finetune.hyperdpo.alpha=[1, 1, 1]")


@pytest.mark.parametrize("override", ["objectives.0.beta=-1", "evaluate.beta_scales=[1, 0]"])
def test_temperatures_must_be_positive(override):
    assert "greater than 0" in config_error(override)


@pytest.mark.parametrize(
    "grid, row",
    [("[[0.5, 0.5], [0.7, 0.7]]", 1), ("[[1.5, -0.5]]", 0), ("[[1, 0], [0, 1], [0.5, .nan]]", 2)],
)
def test_grid_rows_off_the_simplex_are_named(grid, row):
    message = config_error(f"evaluate.grid={grid}")
    assert "'evaluate.grid'" in message
    assert f"grid[{row}]" in message and "simplex" in message


def test_grid_on_the_simplex_is_accepted_and_rows_need_m_weights():
    assert load("evaluate.grid=[[1, 0], [0.25, 0.75]]").evaluate.grid == [[1.0, 0.0], [0.25, 0.75]]
    assert "needs 2 weights" in config_error("evaluate.grid=[[0.5, 0.3, 0.2]]")


@pytest.mark.parametrize("fractions", ["[0.5, 0.3, 0.3]", "[0.6, 0.2, 0.1]"])
def test_split_fractions_must_sum_to_one(fractions):
    message = config_error(f"data.split_fractions={fractions}")
    assert "'data.split_fractions'" in message and "must sum to 1" in message


def test_objective_comment_field_must_be_declared():
    message = config_error(
        "objectives.0.comment_field=clicks", "objectives.0.feature=null", profile="ltr-letor"
    )
    assert "'clicks'" in message and "data.comment_fields" in message and "'inc'" in message


def test_objective_needs_exactly_one_source():
    assert "needs exactly one source" in config_error(
        "objectives.0.comment_field=inc", profile="ltr-letor"
    )


def test_tracks_take_their_own_objective_sources_and_layouts():
    assert "the ltr track takes objectives from `feature` or `comment_field`" in config_error(
        "objectives.0={name: harmless, label: harmless}"
    )
    assert "data.layout 'hh-rlhf' is for the llm track" in config_error("data.layout=hh-rlhf")


@pytest.mark.parametrize("section", ["base.model", "finetune.hyperdpo.model"])
def test_heads_must_divide_hidden(section):
    message = config_error(f"{section}.hidden=30")
    assert f"'{section}'" in message and "heads=4 must divide hidden=30" in message


def test_feature_index_beyond_n_features_is_rejected():
    assert "reads feature 200 but data.n_features is 136" in config_error("objectives.0.feature=200")


# ------------------------------------------------------------------------------------------------
# params.yaml


@pytest.fixture
def params_file(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"profile": "ltr-letor", "overrides": ["base.optim.seed=7"]}))
    return path


def test_params_file_selects_profile_and_applies_its_overrides(params_file):
    cfg = load_config(params_file=params_file)
    assert cfg.profile == "ltr-letor"
    assert cfg.base.optim.seed == 7
    assert load_config("ltr-letor", params_file=params_file).base.optim.seed == 7


def test_params_overrides_apply_only_to_their_own_profile(params_file):
    cfg = load_config("ltr-mslr", params_file=params_file)
    assert cfg.profile == "ltr-mslr"
    assert cfg.base.optim.seed == 0


def test_command_line_overrides_win_over_params_file(params_file):
    assert load_config("ltr-letor", ["base.optim.seed=9"], params_file=params_file).base.optim.seed == 9


def test_params_yaml_in_the_working_directory_is_read(isolated_cwd, params_file):
    assert params_file.parent == isolated_cwd
    assert load_config().base.optim.seed == 7


def test_params_overrides_must_be_a_list(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("profile: ltr-letor\noverrides: base.optim.seed=7\n")
    with pytest.raises(ConfigError, match="`overrides` must be a list"):
        load_config(params_file=path)


def test_bad_value_in_params_file_is_reported(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"profile": "ltr-letor", "overrides": ["evaluate.k=0"]}))
    with pytest.raises(ConfigError, match="'evaluate.k'.*greater than or equal to 1"):
        load_config(params_file=path)


# ------------------------------------------------------------------------------------------------
# reference


def leaf_fields(model: type[BaseModel], prefix: str = "") -> set[str]:
    from moft.config import _model_of

    out = set()
    for name, field in model.model_fields.items():
        sub = _model_of(field.annotation)
        if sub is not None:
            out |= leaf_fields(sub, prefix + name + ("[]." if name == "objectives" else "."))
        else:
            out.add(prefix + name)
    return out


def test_reference_documents_every_leaf_field_with_help():
    rows = reference()
    names = [name for name, _, _ in rows]
    assert len(names) == len(set(names))
    assert leaf_fields(MoftConfig) <= set(names)
    assert {"data.path", "objectives[].transform", "finetune.hyperdpo.alpha", "evaluate.grid"} <= set(names)
    empty = [name for name, _, help_text in rows if not help_text.strip()]
    assert empty == []


def test_reference_defaults_are_the_real_defaults():
    # nested sections built by a default factory show that factory's values, not the class's
    defaults = {name: default for name, default, _ in reference()}
    assert defaults["data.paths"] == "required"
    assert defaults["objectives[].transform"] == '"identity"'
    assert defaults["evaluate.grid"] == "null"
    minimal = {
        "data": {"paths": ["x"]},
        "objectives": [{"name": "a", "feature": 1}, {"name": "b", "feature": 2}],
    }
    cfg = validate_tree(minimal)  # every section at its default
    assert defaults["base.model.hidden"] == str(cfg.base.model.hidden) == "128"
    assert defaults["finetune.hyperdpo.model.hidden"] == str(cfg.finetune.hyperdpo.model.hidden) == "64"
    assert defaults["finetune.hyperdpo.optim.epochs"] == str(cfg.finetune.hyperdpo.optim.epochs)
    assert defaults["finetune.hyperdpo.optim.epochs"] != defaults["base.optim.epochs"]


def test_partial_override_of_a_nested_section_keeps_its_other_defaults():
    """`--set finetune.hyperdpo.model.layers=3` must not reset the hypernetwork to 128 wide."""
    cfg = load_config("ltr-mslr", ["finetune.hyperdpo.model.layers=3", "finetune.baselines.optim.epochs=2"])
    assert cfg.finetune.hyperdpo.model.layers == 3
    assert cfg.finetune.hyperdpo.model.hidden == 64 and cfg.finetune.hyperdpo.model.dropout == 0.0
    assert cfg.finetune.baselines.optim.epochs == 2 and cfg.finetune.baselines.optim.patience == 6
    assert load_config("ltr-mslr").finetune.hyperdpo.optim.epochs == 60
