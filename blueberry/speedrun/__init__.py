"""Speedrun records: tracks as data, the statistics that accept or refuse a claim, and the leaderboard.

Plain Python, NumPy and SciPy: no Ray, no MLflow. `blueberry.platform.leaderboard` reads tagged runs
from MLflow into `Run`s and writes what `board.render` makes of them; `studies/speedrun.py` runs the
repeatability study and the A/B.

- `tracks.py`: `Track` (name, metric, budget or target, direction, minimum runs) and the lab's tracks;
- `stats.py`: Welch's t-test, one-sided in the track's direction, its confidence interval, and the
  acceptance rule (`ALPHA` = 0.01);
- `runs.py`: `Run` (one speedrun run as the board sees it) and which runs count for a track;
- `board.py`: claims judged in order into records and refusals, and the Markdown leaderboard;
- `ab.py`: an A/B's two arms read from JSON files, and their runs interleaved.
"""
