"""Schemathesis hooks for test_schema.py (loaded through SCHEMATHESIS_HOOKS).

One hook only, for the one rule of the server that JSON Schema cannot state.
The contract makes a stat a JSON integer and a float 400, spelling included:
`1.0`, `1e2` and `-0.0` are floats to the server (test_stats.py tests that).
JSON Schema compares numbers by value, so to it `2.0` *is* the integer 2, and
schemathesis deliberately sends such whole floats as valid integers. The
document says so in words (validation.Count's description); here every whole
float a generated JSON body holds is spelled as the integer it equals, as a
client following that description would. Nothing else is changed: a float
with a fraction, or a whole float beyond any integer field's range, is still
sent as generated (and still rejected).
"""

import schemathesis


def _integers_spelled_plainly(value):
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {key: _integers_spelled_plainly(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_integers_spelled_plainly(item) for item in value]
    return value


@schemathesis.hook
def map_case(context, case):
    if isinstance(case.body, (dict, list)):
        case.body = _integers_spelled_plainly(case.body)
    return case
