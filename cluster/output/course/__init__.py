"""The course's reports: a table and a figure per experiment (one module each), drawn from its
runs' metrics.jsonl by the helpers in `common`.

Every number in a report is read from the runs' own records, and every seed that was run is
shown, with the range over them: a result is never one lucky seed. matplotlib is imported where
a figure is drawn, so importing these modules stays light.
"""
