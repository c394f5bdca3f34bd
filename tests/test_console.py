"""Quiet console (varirm/console.py): nothing from third parties reaches a command's output unless
--verbose, whatever the installed versions print, and importing varirm prints nothing."""

import json
import os
import subprocess
import sys
import textwrap

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}
ENV.pop("VARIRM_VERBOSE", None)

# Run in a fresh interpreter: a stand-in for a library that logs a warning (through a logger with no
# handler of its own, as kernels' "Skipping publisher trust check" does) and warns while varirm's
# command imports it, then the command on a bad samples file.
NOISY_COMMAND = textwrap.dedent("""
    import importlib.abc, logging, sys, warnings

    class NoisyImport(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name == "lightning":  # a third-party package that varirm's commands import
                logging.getLogger("thirdparty.probe").warning("probe: a library's warning at import time")
                warnings.warn("probe: a library's UserWarning", UserWarning)
            return None

    sys.meta_path.insert(0, NoisyImport())
    sys.argv = ["varirm", *sys.argv[1:]]
    from varirm.cli import main
    main()
""")


def run_noisy(tmp_path, *flags):
    bad = tmp_path / "samples.jsonl"
    bad.write_text("{not json\n")
    args = [*flags, "evaluate", "--rm", "varirm.synthetic.gold_reward", "--samples", str(bad),
            "--output", str(tmp_path / "out")]
    return bad, subprocess.run([sys.executable, "-c", NOISY_COMMAND, *args], capture_output=True, text=True,
                               env=ENV, timeout=300)


def test_third_party_output_at_import_time_is_dropped_in_quiet_mode(tmp_path):
    bad, proc = run_noisy(tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"varirm: error: {bad}: row 0"), proc.stderr
    assert not (tmp_path / "out").exists()


def test_verbose_shows_third_party_output(tmp_path):
    _, proc = run_noisy(tmp_path, "--verbose")
    assert proc.returncode == 2
    assert "probe: a library's warning at import time" in proc.stderr
    assert "probe: a library's UserWarning" in proc.stderr


def test_importing_every_module_prints_nothing_and_loads_no_bitsandbytes(tmp_path):
    """A plain import (no varirm command, nothing configured) of every module: no output, and neither
    bitsandbytes nor peft loaded (they come only with LoRA / 4-bit weights)."""
    report = tmp_path / "modules.json"
    code = textwrap.dedent(f"""
        import importlib, json, pkgutil, sys
        import varirm
        names = sorted(m.name for m in pkgutil.walk_packages(varirm.__path__, "varirm.") if m.name != "varirm.__main__")
        for name in names:
            importlib.import_module(name)
        loaded = sorted(n for n in ("bitsandbytes", "peft", "kernels") if n in sys.modules)
        open({str(report)!r}, "w").write(json.dumps({{"modules": names, "loaded": loaded}}))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (proc.stdout, proc.stderr) == ("", "")
    result = json.loads(report.read_text())
    assert "varirm.cli" in result["modules"] and "varirm.console" in result["modules"]
    assert "bitsandbytes" not in result["loaded"] and "peft" not in result["loaded"], result["loaded"]


def test_varirm_lines_through_lightning_stay_and_unhandled_library_warnings_go():
    """varirm's data lines go through Lightning's console handler (``rank_zero_info``), which
    Lightning adds only if the root logger has none: quiet mode must leave the root alone."""
    code = textwrap.dedent("""
        import logging
        from varirm import console
        console.quiet_third_party()
        import varirm.lightning_cli
        console.configure()
        from lightning.pytorch.utilities import rank_zero_info
        rank_zero_info("data/train: 4 pairs from 4 rows")
        logging.getLogger("thirdparty.probe").warning("probe: unhandled library warning")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (proc.stdout + proc.stderr).strip() == "data/train: 4 pairs from 4 rows"


def test_unhandled_library_errors_still_show_in_quiet_mode():
    code = textwrap.dedent("""
        import logging
        from varirm import console
        console.quiet_third_party()
        logging.getLogger("thirdparty.probe").warning("probe: a warning")
        logging.getLogger("thirdparty.probe").error("probe: an error")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=120)
    assert proc.returncode == 0 and proc.stdout == ""
    assert proc.stderr.strip() == "probe: an error"
