"""A check command for `tui-infer store verify RUN --check-cmd 'python assets/examples/grade.py'`.

It reads the rows as JSONL on stdin ({"id", "prompt", "messages", "output",
"finish_reason", "generated_tokens"}) and answers one line per id on stdout:
`ID pass` or `ID fail REASON`. This one fails answers that are empty or that shout.
"""

import json
import sys

for line in sys.stdin:
    row = json.loads(line)
    output = row["output"].strip()
    if not output:
        print(f"{row['id']} fail empty answer")
    elif output.isupper():
        print(f"{row['id']} fail all capitals")
    else:
        print(f"{row['id']} pass")
