"""One check for the tables of bad configs: `config validate` refuses with file:line."""

from __future__ import annotations

from pathlib import Path

from edge_agent.cli import main as cli_main


def assert_validate_refuses(path: Path, text: str, line: int, fragment: str, capsys) -> None:
    """Write ``text`` to ``path``; `config validate` exits 2 naming ``path:line`` and
    ``fragment`` on stderr, without a traceback."""
    path.write_text(text)
    assert cli_main(["config", "validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:{line}: " in err, err
    assert fragment in err, err
    assert "Traceback" not in err
