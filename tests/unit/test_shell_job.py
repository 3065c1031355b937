"""ShellJob (seamless/shell/job.py): the job description the queue server and seamless-run share."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from seamless.shell.job import JobFormatError, ShellJob

# Text as it comes from os.fsdecode: any str, lone surrogates included.
_text = st.text(st.characters(blacklist_categories=("Cs",)) | st.sampled_from(["\udcff", "\udc80"]))


@given(command=_text.filter(str.strip), inputs=st.lists(_text), captures=st.lists(_text),
       vars_=st.dictionaries(_text, _text), sandbox=st.booleans(), use_cache=st.booleans(),
       stdout_path=st.none() | _text, held=st.lists(_text))
def test_a_job_round_trips_through_json_exactly(command, inputs, captures, vars_, sandbox,
                                                use_cache, stdout_path, held):
    job = ShellJob(command, inputs=inputs, captures=captures, vars=vars_, sandbox=sandbox,
                   use_cache=use_cache, stdout_path=stdout_path, held_futures=held)
    wire = json.dumps(job.to_wire())  # ensure_ascii: surrogates travel as \\u escapes
    assert ShellJob.from_wire(json.loads(wire)) == job


@pytest.mark.parametrize("data, fault", [
    ([], "a JSON object"),
    ({"vars": {}}, "'command' is missing"),
    ({"command": "ls"}, "'vars' is missing"),
    ({"command": " ", "vars": {}}, "'command' is empty"),
    ({"command": "ls", "vars": {}, "sandbox": "yes"}, "'sandbox' must be a bool"),
    ({"command": "ls", "vars": {"A": 1}}, "'vars' must be a str dict"),
    ({"command": "ls", "vars": {}, "inputs": ["a", 2]}, "'inputs' must be a list of strings"),
    ({"command": "ls", "vars": {}, "shell": "zsh"}, "unknown job field(s) shell"),
])
def test_a_bad_description_names_the_field(data, fault):
    with pytest.raises(JobFormatError, match=None) as info:
        ShellJob.from_wire(data)
    assert fault in str(info.value)
