"""phf.io.integrity: temp files of processes that are gone are removed, a live writer's are kept."""

import os
import subprocess
import sys
import time
from pathlib import Path

from phf.io.integrity import remove_stale_temps, temp_path


def test_temps_of_dead_and_zombie_writers_go_a_live_writers_stay(tmp_path):
    mine = temp_path(tmp_path / "live.parquet")  # named by this (live) process
    mine.write_text("being written")
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.time() + 30
    stat = Path(f"/proc/{zombie.pid}/stat")
    while time.time() < deadline and stat.read_text().rpartition(")")[2].split()[0] != "Z":
        time.sleep(0.05)  # exited, not yet reaped: what a SIGKILLed worker of a dead parent stays
    zombie_temp = mine.with_name(mine.name.replace(f"-{os.getpid()}.", f"-{zombie.pid}."))
    zombie_temp.write_text("left by a killed worker")
    zombie_dir = zombie_temp.with_name(".step-0000002" + zombie_temp.name[len(".live.parquet") :])
    zombie_dir.mkdir()
    (zombie_dir / "model.safetensors").write_text("half")
    try:
        removed = remove_stale_temps(tmp_path)
    finally:
        zombie.wait()
    assert sorted(p.name for p in removed) == sorted([zombie_temp.name, zombie_dir.name])
    assert [p.name for p in tmp_path.iterdir()] == [mine.name]
