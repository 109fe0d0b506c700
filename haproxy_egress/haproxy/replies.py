"""What haproxy answers to the runtime API's commands that change things (`add server`,
`del server`, `set/commit ssl …`, the master's `reload`): the words, read here and nowhere
else."""

from __future__ import annotations

SERVER_ADDED = "New server registered."  # `add server`: the only answer that means success
DONE = ""  # `set server`, `enable …`, `commit`, `add acl|map`: silence is success


def server_deleted(answer: str) -> bool:
    """`del server` removed it, or it was already gone."""
    text = answer.strip()
    return text == "Server deleted." or text.startswith("No such")


def server_busy(answer: str) -> bool:
    """`del server` refused: the server still has connections (try again after the drain)."""
    return "still has connections" in answer


def reload_refused(answer: str) -> bool:
    """The master's `reload` (2.7+) says the new configuration did not load; 2.6 answers
    before it tries, so its failure is read from `show proc` (`Proc.failed_reloads`)."""
    return "Success=0" in answer


def ssl_transaction_open(answer: str) -> bool:
    """`set ssl cert|ca-file|crl-file <file> <<` took the payload ("Transaction created" on
    the first set, "Transaction updated" on a later one)."""
    return "ransaction created" in answer or "ransaction updated" in answer


def ssl_committed(answer: str) -> bool:
    """`commit ssl …` swapped the new material in ("Success!" after the progress dots)."""
    return "Success!" in answer
