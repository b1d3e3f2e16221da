"""Reading params YAML: bounded size and alias expansion (checked before anything is built),
duplicate keys named with both lines, safe tags only, files that are not YAML text refused."""

import os
import threading
import time

import pytest

from dinoflow.config.params_yaml import (
    MAX_PARAMS_BYTES,
    MAX_YAML_NODES,
    check_tree,
    parse_override,
    parse_yaml,
    read_params_file,
)
from dinoflow.errors import ConfigError


def test_duplicate_keys_name_both_lines():
    with pytest.raises(ConfigError, match=r"p\.yaml: key 'lr' appears twice in one mapping \(lines 2 and 4\)"):
        parse_yaml("a:\n  lr: 1\n  b: 2\n  lr: 3\n", "p.yaml")
    with pytest.raises(ConfigError, match=r"key 'x' appears twice in one mapping \(twice on line 1\)"):
        parse_yaml("{x: 1, x: 2}", "p.yaml")


def test_merge_keys_may_be_overridden():
    assert parse_yaml("base: &b {x: 1, y: 2}\nc:\n  <<: *b\n  x: 5\n", "p") == {
        "base": {"x": 1, "y": 2},
        "c": {"x": 5, "y": 2},
    }


def test_alias_bomb_is_refused_before_expansion_in_milliseconds():
    levels = ["a: &a [" + ",".join(["x"] * 9) + "]"]
    for prev, cur in zip("abcdefgh", "bcdefghi"):
        levels.append(f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * 9) + "]")
    text = "\n".join(levels) + "\n"  # 9**9 = 387 million values from ~340 bytes
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=f"expands to more than {MAX_YAML_NODES:,} values") as e:
        parse_yaml(text, "bomb.yaml")
    assert time.perf_counter() - t0 < 1.0 and len(str(e.value)) < 300


def test_shared_anchors_count_as_their_expansion():
    ok = "a: &a [" + ",".join(["1"] * 100) + "]\nb: [" + ",".join(["*a"] * 900) + "]\n"  # 90,000 + ~1,000 values
    assert len(parse_yaml(ok, "p")["b"]) == 900
    too_many = "a: &a [" + ",".join(["1"] * 100) + "]\nb: [" + ",".join(["*a"] * 1000) + "]\n"
    with pytest.raises(ConfigError, match="expands to more than"):
        parse_yaml(too_many, "p")


def test_recursion_and_depth():
    with pytest.raises(ConfigError, match="refers to itself"):
        parse_yaml("a: &a\n  b: *a\n", "p")
    with pytest.raises(ConfigError, match="nested deeper than 32 levels"):
        parse_yaml("[" * 40 + "]" * 40, "p")
    with pytest.raises(ConfigError, match="nested (too|deeper)"):
        parse_yaml("[" * 5000 + "]" * 5000, "p")  # deeper than PyYAML's recursive composer can go


def test_only_safe_tags():
    with pytest.raises(ConfigError, match=r"not valid YAML \(line 1, column 4\): could not determine a constructor"):
        parse_yaml("a: !!python/object/apply:os.system ['true']", "p")


def test_syntax_error_has_line_and_column():
    with pytest.raises(ConfigError, match=r"p: not valid YAML \(line 2, column 1\)"):
        parse_yaml("a: [1,\n", "p")


def test_file_kinds(tmp_path):
    (tmp_path / "bom.yaml").write_bytes("\ufeffpretrain: {seed: 1}\n".encode())
    assert read_params_file(tmp_path / "bom.yaml") == {"pretrain": {"seed": 1}}
    (tmp_path / "nul.yaml").write_bytes(b"a: 1\n\x00\x01")
    with pytest.raises(ConfigError, match="binary file"):
        read_params_file(tmp_path / "nul.yaml")
    (tmp_path / "big.yaml").write_bytes(b"#" * (MAX_PARAMS_BYTES + 1))
    with pytest.raises(ConfigError, match="more than a params file may hold"):
        read_params_file(tmp_path / "big.yaml")
    with pytest.raises(ConfigError, match="is a directory"):
        read_params_file(tmp_path)
    with pytest.raises(ConfigError, match="more than 1,048,576 bytes"):
        read_params_file("/dev/zero")  # a device that never ends is read only up to the bound


def test_fifo_without_writer_does_not_block(tmp_path):
    os.mkfifo(tmp_path / "f.yaml")
    t0 = time.perf_counter()
    assert read_params_file(tmp_path / "f.yaml") is None
    assert time.perf_counter() - t0 < 1.0


def test_fifo_with_a_writer_is_read(tmp_path):
    """`-c <(generate-params)` hands over a pipe: it is read to its end."""
    fifo = tmp_path / "f.yaml"
    os.mkfifo(fifo)

    def write():
        with open(fifo, "w") as f:
            f.write("pretrain: {seed: 7}\n")

    t = threading.Thread(target=write)
    t.start()
    time.sleep(0.2)  # the writer is waiting for a reader
    try:
        assert read_params_file(fifo) == {"pretrain": {"seed": 7}}
    finally:
        t.join(timeout=5)


def test_unreadable_file_is_a_config_error():
    import shutil
    import subprocess
    import sys
    import tempfile

    from fs_sandbox import unprivileged_prefix

    prefix = unprivileged_prefix()
    root = tempfile.mkdtemp(prefix="dinoflow-params-")  # traversable by the unprivileged run
    try:
        os.chmod(root, 0o755)
        p = os.path.join(root, "p.yaml")
        with open(p, "w") as f:
            f.write("a: 1\n")
        os.chmod(p, 0)
        code = (
            "from dinoflow.config.params_yaml import read_params_file as r\n"
            "try: r(%r)\nexcept Exception as e: print(type(e).__name__, e)" % p
        )
        r = subprocess.run([*prefix, sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert "ConfigError" in r.stdout and "cannot be read: Permission denied" in r.stdout, r.stdout + r.stderr
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_overrides_are_guarded_like_files():
    assert parse_override("pretrain.optim={base_lr: 1}") == ("pretrain.optim", {"base_lr": 1})
    assert parse_override("curate.seeds=") == ("curate.seeds", "")
    with pytest.raises(ConfigError, match="appears twice"):
        parse_override("a={x: 1, x: 2}")
    with pytest.raises(ConfigError, match="must look like section.key=value"):
        parse_override("pretrain.seed")


def test_tree_checks():
    with pytest.raises(
        ConfigError, match="pretrain.train.epochs: 1000000000000000000000000000000000000000… does not fit in 64 bits"
    ):
        check_tree({"pretrain": {"train": {"epochs": 10**60}}})
    with pytest.raises(ConfigError, match="True: keys must be names, got a bool"):
        check_tree({True: 1})
    check_tree({"seed": -(2**63 - 1), "a": [1, 2.5, None, True]})


def test_params_text_is_guarded_like_a_file():
    """Params held in memory (a pipeline parameter) meet the checks a params file meets."""
    from dinoflow.config import config_from_text

    bomb = (
        "a: &a ["
        + ",".join(["x"] * 9)
        + "]\n"
        + "".join(f"{c}: &{c} [" + ",".join([f"*{p}"] * 9) + "]\n" for p, c in zip("abcdefgh", "bcdefghi"))
    )
    with pytest.raises(ConfigError, match="params_yaml: the YAML expands to more than"):
        config_from_text(bomb, origin="params_yaml")
    # 400,000 three-byte characters: under the bound in characters, over it in bytes
    with pytest.raises(ConfigError, match=f"params_yaml: 1,200,0.. bytes is more than .*{MAX_PARAMS_BYTES:,}"):
        config_from_text("#" + "€" * 400_000 + "\n{}", origin="params_yaml")
    undecodable = b"seed: 1 # caf\xe9\n".decode("utf-8", "surrogateescape")  # latin-1 bytes read as UTF-8
    with pytest.raises(ConfigError, match="params_yaml is not UTF-8 text"):
        config_from_text(undecodable, origin="params_yaml")
    with pytest.raises(ConfigError, match="key 'seed' appears twice"):
        config_from_text("seed: 1\nseed: 2\n", origin="params_yaml")
    with pytest.raises(ConfigError, match="params_yaml is empty"):
        config_from_text("# only a comment\n", origin="params_yaml")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        config_from_text("[1, 2]", origin="params_yaml")
    assert config_from_text("\ufeffseed: 4\n", ["pretrain.seed=5"]).pretrain.seed == 5  # a BOM, as in a file
