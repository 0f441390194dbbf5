"""python -m degflow.data.check: printed findings, one line per problem, exit codes,
no stack traces for data problems."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from _data_trees import make_paired, make_realsr, rand_image, save
from degflow.cli.app import run_tool
from degflow.cli.check_data import main

REPO = Path(__file__).resolve().parents[1]


def run_check(*overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "degflow.data.check", *overrides],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=120)


@pytest.fixture
def check(capsys):
    """In-process run (fast): returns an object like CompletedProcess."""
    def run(*overrides: str) -> subprocess.CompletedProcess:
        with pytest.raises(SystemExit) as exited:
            run_tool(main, list(overrides))
        rc = exited.value.code
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(["check", *overrides], rc, out, err)
    return run


def test_clean_realsr_tree_exits_0_and_describes_what_it_found(tmp_path, check):
    root = make_realsr(tmp_path / "R", cams=("Canon", "Nikon"), n=2)
    r = check("data=realsr", f"data.root={root}", "data.camera=[Canon,Nikon]",
                  "data.crop_size=16")
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "V2 (LR stored at HR size)" in out and "['Canon', 'Nikon']" in out
    assert "train: Train, scales 1,2,4: 2 complete tuples, HR sizes 56x40" in out
    assert ("val: Train (held out: data.val_fraction=0.1, seed 0), scales 1,2,3,4: 2 complete "
            "tuples") in out
    assert "test: Test, scales 1,2,3,4: 4 complete tuples" in out
    assert "Canon/Train/2 (train): 1 HR, 1 LR2 files" in out
    assert "Canon/Train/3 (val): 1 HR, 1 LR3 files" in out and "not used" not in out
    assert "OK: no problems found" in out


def test_broken_realsr_tree_prints_one_line_per_problem_and_exits_1(tmp_path):
    root = make_realsr(tmp_path / "R", splits={"Train": (2, 3, 4), "Test": (2, 4)}, n=3)
    save(root / "Canon/Train/4/Canon_002_LR4.png", rand_image(10, 10, 0))  # size mismatch (val)
    (root / "Canon/Train/2/Canon_003_LR2.png").write_bytes(b"garbage")  # unreadable (train)
    r = run_check("data=realsr", f"data.root={root}", "data.crop_size=16")
    assert r.returncode == 1
    assert "Traceback" not in r.stdout + r.stderr
    problems = [line for line in r.stdout.splitlines() if line.startswith("PROBLEM: ")]
    assert len(problems) == 3, r.stdout
    missing, = [p for p in problems if "missing scale" in p]
    assert "Canon/Test has no folder '3' for scale 3 (data.val_scales)" in missing
    assert "['2', '4']" in missing
    size, = [p for p in problems if "size mismatch" in p]
    assert "Canon_002_LR4.png is 10x10" in size and "Canon_002_HR.png is 56x40" in size
    bad, = [p for p in problems if "unreadable" in p]
    assert "Canon_003_LR2.png" in bad
    assert "FAILED: 3 problem(s) found" in r.stdout


def test_truncated_file_found_by_full_decode_only(tmp_path, check):
    root = make_realsr(tmp_path / "R", n=2)
    p = root / "Canon/Test/3/Canon_001_LR3.png"  # the validator checks the test split too
    p.write_bytes(p.read_bytes()[:300])
    deep = check("data=realsr", f"data.root={root}", "data.crop_size=16")
    assert deep.returncode == 1 and "Canon_001_LR3.png" in deep.stdout
    assert "truncated" in deep.stdout
    shallow = check("data=realsr", f"data.root={root}", "data.crop_size=16",
                        "+check.deep=false")
    assert shallow.returncode == 0 and "headers only" in shallow.stdout


def test_missing_root_is_a_data_problem_without_traceback(tmp_path, check):
    r = check("data=realsr", f"data.root={tmp_path / 'nope'}")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "PROBLEM: missing root: data.root=" in r.stdout


def test_config_errors_exit_2_with_a_message(check):
    r = run_check("data=realsr")  # as a real process: exit status and stderr
    assert r.returncode == 2 and "data.root is required" in r.stderr
    assert "Traceback" not in r.stderr
    r = check("data=nosuchoption")
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "nosuchoption" in r.stderr
    assert "Traceback" not in r.stderr


def test_paired_tree_with_missing_partner_and_small_images(tmp_path, check):
    root = make_paired(tmp_path / "P", scales=(4,), n=4, true_size=True)
    (root / "x4" / "img_03.png").unlink()
    r = check("data=paired", f"data.root={root}", "data.crop_size=48")
    assert r.returncode == 1
    assert "HR (4 files), x4 (3 files)" in r.stdout
    assert any("missing partner" in line and "img_03.png has no x4 partner" in line
               for line in r.stdout.splitlines())
    assert any("too small" in line and "data.crop_size=48" in line
               for line in r.stdout.splitlines())


def test_default_demo_check_passes(check):
    r = check()
    assert r.returncode == 0, r.stdout + r.stderr
    assert "demo: 5 train photos (bottom 0.25 of each held out for validation) / 2 test photos" \
        in r.stdout and "test: chelsea.png: 451x300" in r.stdout


def test_conf_data_options_instantiate_with_hydra(tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from degflow.data import DataBundle
    from degflow.cli.app import CONF_DIR

    root = make_paired(tmp_path / "P", scales=(4,), n=3)
    realsr = make_realsr(tmp_path / "R", n=2)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        demo = compose("config", overrides=["data.max_side=96", "data.crop_size=32"])
        paired = compose("config", overrides=["data=paired", f"data.root={root}",
                                              "data.crop_size=16"])
        rs = compose("config", overrides=["data=realsr", f"data.root={realsr}",
                                          "data.crop_size=16"])
    assert demo.data._target_ == "degflow.data.demo.demo_data"
    for cfg in (demo, paired, rs):
        b = instantiate(cfg.data)
        assert isinstance(b, DataBundle) and b.train_scales[0] == 1.0
        assert b.train[0]["hr"].shape[-1] == cfg.data.crop_size
    assert instantiate(rs.data).val_scales == (1.0, 2.0, 3.0, 4.0)


def test_the_validator_picks_its_scan_from_the_option_registry_exactly():
    """A _target_ that merely ends like a factory's name is not that option."""
    from degflow.cli.check_data import check_data
    from degflow.data.options import DATA_OPTIONS, option_defaults

    with pytest.raises(ValueError, match=r"mypackage\.realsr_data.*not a data option.*"
                                         r"degflow\.data\.realsr\.realsr_data"):
        check_data({**option_defaults("realsr"), "_target_": "mypackage.realsr_data", "root": "/x"})
    assert sorted(DATA_OPTIONS) == sorted(p.stem for p in (REPO / "conf" / "data").glob("*.yaml"))
    for name, option in DATA_OPTIONS.items():
        text = (REPO / "conf" / "data" / f"{name}.yaml").read_text()
        assert f"_target_: {option.target}\n" in text


def test_data_option_defaults_have_one_home_the_yaml():
    """Factories take every setting explicitly, exactly the keys of conf/data/<option>.yaml;
    build_data fills them from there and refuses unknown settings."""
    import inspect

    from degflow.data import build_data
    from degflow.data.options import DATA_OPTIONS, option_defaults

    for name, option in DATA_OPTIONS.items():
        params = inspect.signature(option.factory).parameters
        assert all(p.default is inspect.Parameter.empty for p in params.values()), name
        assert set(params) == set(option_defaults(name)), name
    with pytest.raises(ValueError, match=r"data=demo has no setting\(s\) \['camera'\]"):
        build_data("demo", camera="Canon")
