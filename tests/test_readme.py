"""README.md stays true to the code: the two commands, and a configuration reference that is
exactly what the config model generates (every key, its type and default)."""

from pathlib import Path

from dinoflow.config_reference import BEGIN, END, leaf_keys, reference_markdown

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_shows_the_two_commands():
    text = README.read_text()
    assert "make demo" in text and "make test" in text


def test_config_reference_is_current():
    text = README.read_text()
    assert BEGIN in text and END in text, "README.md lacks the generated configuration reference"
    current = text[text.index(BEGIN) : text.index(END) + len(END)]
    assert current == reference_markdown(), "regenerate it: python -m dinoflow.config_reference --write"


def test_every_params_yaml_key_is_documented():
    import yaml

    documented = set(leaf_keys())

    def keys(tree, prefix=""):
        for k, v in tree.items():
            if isinstance(v, dict) and f"{prefix}{k}" not in documented:  # a section, not a dict-valued key
                yield from keys(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}"

    params = yaml.safe_load((README.parent / "params.yaml").read_text())
    text = README.read_text()
    for key in keys(params):
        assert key in documented, f"params.yaml key {key} is not in the config model"
        assert f"`{key}`" in text, f"params.yaml key {key} is not in README.md"
