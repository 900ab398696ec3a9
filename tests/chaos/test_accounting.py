"""How the chaos run decides that an event was lost (``Socket.lost`` in ``test_faults``).

The run's open ``message.updated`` "losses" under a Firestore blackhole were events the bus carried while
a later fault (the message service killed) had the socket down: the media backlog the blackhole left
finished those images then, and the reconnect's refetch covers them, as the socket's contract says. They
were counted lost because a refetch was credited only to the phase whose send was answered. These cases,
with times as the run's tap and socket record them, pin the rule down.
"""

from __future__ import annotations

from tests.chaos.test_faults import Expected, Socket

# Two phases: the first's recovery ends at 10 s (1 s into the second's fault), the second's at 20 s.
ENDS = (10.0, 20.0)


def window(at: float) -> float:
    for end in ENDS:
        if at <= end:
            return end
    return at + 5.0


def socket(*refetches: float, received: tuple[str, tuple[str, ...]] | None = None) -> Socket:
    state = Socket(resyncs=list(refetches))
    if received is not None:
        state.received.add(received)
    return state


UPDATED = Expected("message.updated", ("m1",), answered_at=7.5)


def test_an_event_published_while_a_later_fault_had_the_socket_down_is_covered_by_its_reconnect() -> None:
    # Sent at 7.5 s, its image finished at 12 s while the socket was down; the reconnect at 14 s refetches.
    assert not socket(14.0).lost(UPDATED, window, published=12.0)


def test_an_event_published_while_the_socket_was_up_and_never_received_is_lost() -> None:
    # No refetch after its publish: the client shows "processing" for good.
    assert socket(3.0).lost(UPDATED, window, published=8.0)
    # A refetch before the publish does not cover it (the image was still processing then).
    assert socket(8.5).lost(UPDATED, window, published=12.0)


def test_a_refetch_long_after_its_phase_does_not_cover_an_event() -> None:
    assert socket(25.0).lost(UPDATED, window, published=8.0)


def test_a_finished_image_never_announced_is_lost_whatever_the_refetches() -> None:
    assert socket(8.0, 9.0).lost(UPDATED, window, published=None)


def test_a_change_answered_then_published_late_is_covered_by_a_refetch_after_its_answer() -> None:
    read = Expected("message.read", ("m1", "bob"), answered_at=3.0)
    assert not socket(4.0).lost(read, window, published=None)  # relayed later, or never: refetched
    assert socket(2.0).lost(read, window, published=None)  # refetched before the change


def test_an_event_received_is_never_lost() -> None:
    assert not socket(received=("message.updated", ("m1",))).lost(UPDATED, window, published=8.0)
