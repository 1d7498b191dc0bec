"""Model names as users type them: case-insensitive matching, and a suggestion for a near miss.

`variant=B5` means b5. The repository's own spelling stays canonical (metrics labels, answers);
only the lookup forgives case. A name that matches nothing gets the closest valid one suggested.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

# How similar (difflib ratio, 0..1) a typo must be to a valid name to be suggested.
_SUGGESTION_CUTOFF = 0.5
# Names are echoed back to the client: keep what we quote short.
_QUOTED_LENGTH = 64


def match_name(name: str, valid: Iterable[str]) -> str | None:
    """The valid name `name` refers to: an exact match first, else the one equal ignoring case.
    None when nothing matches, or when two valid names differ only in case (ambiguous)."""
    names = list(valid)
    if name in names:
        return name
    folded = name.casefold()
    candidates = [candidate for candidate in names if candidate.casefold() == folded]
    return candidates[0] if len(candidates) == 1 else None


def closest_name(name: str, valid: Iterable[str]) -> str | None:
    """The valid name most like `name` (ignoring case), or None when none is close."""
    by_folded = {candidate.casefold(): candidate for candidate in valid}
    found = difflib.get_close_matches(name.casefold(), list(by_folded), n=1, cutoff=_SUGGESTION_CUTOFF)
    return by_folded[found[0]] if found else None


def unknown_name_message(name: str, valid: Iterable[str], what: str = "model") -> str:
    """`unknown model 'b9'; did you mean 'b0'? valid models: b0, b3, lite0`."""
    names = sorted(valid)
    quoted = name[:_QUOTED_LENGTH]
    suggestion = closest_name(quoted, names)
    hint = f" did you mean '{suggestion}'?" if suggestion else ""
    listed = ", ".join(names) or "none"
    return f"unknown {what} '{quoted}';{hint} valid {what}s: {listed}"
