"""Volume sizes: the CO's capacity range met by rounding up to whole MiB,
raising to the minimum and checking the limit and the operator's cap,
before anything is made. The same rules as the Rust SDK's `capacity`
(`sdk/src/capacity.rs`); CSI's 0 ("unset") counts as unset in either bound.
Pure Python, no WIT: `python3 -m unittest` runs its tests natively."""

MIB = 1 << 20
GIB = 1 << 30


class OutOfRange(ValueError):
    """The range cannot be met: OUT_OF_RANGE."""


class Invalid(ValueError):
    """The request is malformed: INVALID_ARGUMENT."""


def _bounds(required, limit):
    return (required or None), (limit or None)


def human(n):
    return f"{n // MIB} MiB" if n and n % MIB == 0 else f"{n} bytes"


class Rules:
    def __init__(self, unit=MIB, minimum=MIB, maximum=None, default=64 * MIB):
        self.unit, self.min, self.max, self.default = unit, minimum, maximum, default

    def for_create(self, required, limit):
        """The size of a new volume."""
        required, limit = _bounds(required, limit)
        if required is not None:
            want = required
        elif limit is not None:
            want = min(self.default, limit // self.unit * self.unit)
        else:
            want = self.default
        return self._rounded(want, limit)

    def for_expand(self, current, required, limit):
        """The size after an expansion: at or below `current` answers
        `current`; `current` None (the controller knows no size) only
        rounds and checks."""
        required, limit = _bounds(required, limit)
        if required is None:
            if current is None:
                raise Invalid("expanding a volume needs required_bytes")
            return current
        if current is not None and required <= current:
            return current
        return max(self._rounded(required, limit), current or 0)

    def _rounded(self, want, limit):
        size = max(-(-want // self.unit) * self.unit, self.min)
        why = f"{human(want)} requested" + (
            "" if size == want else f" rounds up to {human(size)} (whole MiB, at least {human(self.min)})"
        )
        if limit is not None and size > limit:
            raise OutOfRange(f"{why}, above limit_bytes {human(limit)}")
        if self.max is not None and size > self.max:
            raise OutOfRange(f"{why}, above this driver's maxVolumeBytes {human(self.max)}")
        if size >= 1 << 63:
            raise OutOfRange(f"{want} bytes is too large a volume")
        return size


_UNITS = {"": 1, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40,
          "k": 1000, "K": 1000, "M": 10**6, "G": 10**9, "T": 10**12}


def parse_quantity(text):
    """"10Gi", "512Mi", "1000000": bytes, or None."""
    text = text.strip()
    digits = len(text) - len(text.lstrip("0123456789"))
    if digits == 0 or text[digits:] not in _UNITS:
        return None
    return int(text[:digits]) * _UNITS[text[digits:]]
