"""seqprof's harness, in pipeline order (imports point down this list only):

units -> results (schema, store) -> trackers -> run -> analysis -> present -> reproduce -> cli;
bench holds what only the benchmark suite uses.
"""
