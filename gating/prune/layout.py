"""What the dependency tracer finds: channel segments, module members, groups, and its error.

A *layout* describes the channel dimension of one tensor as consecutive
segments, each a run of channels of one dependency group
(``docs/design.md#static-pruning``).
"""

from __future__ import annotations

from dataclasses import dataclass, field


class TraceError(NotImplementedError):
    """The dependency tracer met an operation whose channel coupling it cannot follow."""


@dataclass(frozen=True)
class Segment:
    """``length`` consecutive channels of group ``group``, each spanning ``repeat`` features."""

    group: int
    length: int
    repeat: int = 1


Layout = tuple[Segment, ...]


@dataclass(frozen=True)
class Member:
    """How one module's channels map onto dependency groups.

    ``role`` is ``"out"`` (output channels: convolutions, linears, and the
    channels of BatchNorm and depthwise convs, which follow their input) or
    ``"in"`` (input channels or features of a convolution or linear).
    ``layout`` lists, in channel order, the group segments this side of the
    module is made of; most modules have one segment.
    """

    module: str
    role: str
    layout: Layout


@dataclass
class DependencyGroup:
    """Channels that must be removed together.

    Attributes:
        index: the group's id, as used in :class:`Segment` and pruning plans.
        channels: number of channels in the group.
        producers: modules whose output channels form the group (convs, linears).
        members: every (module, role) whose channels include this group's.
        prunable: ``False`` when the group reaches a model input or output.
        reason: why it is not prunable (empty when it is).
    """

    index: int
    channels: int
    producers: list[str] = field(default_factory=list)
    members: list[Member] = field(default_factory=list)
    prunable: bool = True
    reason: str = ""

    def offsets(self, member: Member) -> list[tuple[int, int]]:
        """``(feature offset, repeat)`` of every segment of this group in ``member``'s layout."""
        found, offset = [], 0
        for seg in member.layout:
            if seg.group == self.index:
                found.append((offset, seg.repeat))
            offset += seg.length * seg.repeat
        return found
