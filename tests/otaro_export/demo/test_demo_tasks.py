import pytest

from otaro_export.demo.tasks import DEFAULT_MAX_NEW_TOKENS, load_tasks, parse_tasks
from otaro_export.demo.toml_io import DemoConfigError, parse_toml


def test_parses_both_kinds(tmp_path):
    path = tmp_path / "tasks.toml"
    path.write_text(
        '[[task]]\nname = "s"\nkind = "choose"\nprompt = "p?"\noptions = ["yes", "no"]\n'
        '[[task]]\nname = "g"\nkind = "generate"\nprompt = "write"\n'
    )
    s, g = load_tasks(path)
    assert (s.kind, s.options) == ("choose", ("yes", "no"))
    assert (g.kind, g.max_new_tokens) == ("generate", DEFAULT_MAX_NEW_TOKENS)


def test_a_choice_can_name_the_words_its_answer_starts_with():
    data = '[[task]]\nname = "s"\nkind = "choose"\nprompt = "p?"\noptions = ["yes", "no"]\nanswer_prefix = " It is "\n'
    (task,) = parse_tasks(parse_toml(data, "t.toml"), "t.toml")
    assert task.answer_prefix == "It is"
    (plain,) = parse_tasks(parse_toml(data.replace('answer_prefix = " It is "\n', ""), "t.toml"), "t.toml")
    assert plain.answer_prefix == ""
    # the built-in script scores its choices after a prefix: without one even the float model picks noise
    assert all(t.answer_prefix for t in load_tasks() if t.kind == "choose")


@pytest.mark.parametrize(
    "toml, message",
    [
        ("", r"at least one \[\[task\]\]"),
        ('[[task]]\nname = "a"\nkind = "classify"\nprompt = "p"', "kind must be one of"),
        ('[[task]]\nname = "a"\nkind = "choose"\nprompt = "p"\noptions = ["x"]', "at least 2"),
        ('[[task]]\nname = "a"\nkind = "choose"\nprompt = "p"\noptions = ["x", "x"]', "duplicates"),
        ('[[task]]\nname = "a"\nkind = "generate"\nprompt = ""', "'prompt' must be a non-empty string"),
        ('[[task]]\nname = "a"\nkind = "generate"\nprompt = "p"\nmax_new_tokens = 0', "max_new_tokens"),
        (
            '[[task]]\nname = "a"\nkind = "generate"\nprompt = "p"\noptions = ["x", "y"]',
            r"unknown key\(s\) \['options'\]",
        ),
        ('[[task]]\nname = "a b"\nkind = "generate"\nprompt = "p"', "letters, digits"),
        (
            '[[task]]\nname = "a"\nkind = "choose"\nprompt = "p"\noptions = ["x", "y"]\nanswer_prefix = 3',
            "answer_prefix",
        ),
        (
            '[[task]]\nname = "a"\nkind = "generate"\nprompt = "p"\nanswer_prefix = "It"',
            r"unknown key\(s\) \['answer_prefix'\]",
        ),
        (
            '[[task]]\nname = "a"\nkind = "generate"\nprompt = "p"\n[[task]]\nname = "a"\nkind = "generate"\nprompt = "q"',
            "used twice",
        ),
    ],
)
def test_invalid_task_scripts(toml, message):
    with pytest.raises(DemoConfigError, match=message):
        parse_tasks(parse_toml(toml, "t.toml"), "t.toml")
