"""What the terminal client prints of other people's text."""

from __future__ import annotations

from confero.protocol.signaling import ChatMessage, MeetingInfo
from confero.terminal import format_chat, format_meetings


def test_escape_sequences_from_others_never_reach_the_terminal() -> None:
    message = ChatMessage(meeting_id="m", seq=1, sender="eve\x1b]0;owned\x07",
                          sender_id="p", text="clear\x1b[2J\nsecond line\x9b", ts=0.0)
    line = format_chat(message)
    assert "\x1b" not in line and "\x07" not in line and "\n" not in line
    assert "\x9b" not in line
    assert line.endswith("eve]0;owned: clear[2J second line")
    [_, row] = format_meetings([MeetingInfo(id="abc", title="t\x1b[31mred", creator="c",
                                            participant_count=1, has_password=False,
                                            created_at=0.0)])
    assert "\x1b" not in row
