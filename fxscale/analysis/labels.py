"""Channel-space algebra: atoms, labels (concatenations of parts), identity/size union-find, refinement."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional


@dataclass(frozen=True)
class Part:
    """One segment of a tensor dimension: atom `atom`, each channel spanning `inner` consecutive elements."""

    atom: int
    inner: int = 1


Label = Optional[tuple]  # tuple[Part, ...] for a channel dimension, None for batch/spatial/fixed dims


class _UF:
    """Union-find over integer ids with path halving."""

    def __init__(self) -> None:
        self.parent: list[int] = []

    def add(self) -> int:
        self.parent.append(len(self.parent))
        return len(self.parent) - 1

    def find(self, a: int) -> int:
        p = self.parent
        while p[a] != a:
            p[a] = p[p[a]]
            a = p[a]
        return a

    def union(self, a: int, b: int) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)
        return min(ra, rb)


class Incompatible(Exception):
    """Two labels cannot be tied (boundaries or factors do not line up)."""


class Atoms:
    """All channel atoms of one graph: sizes, identity ties, size ties, refinements and freeze reasons."""

    def __init__(self) -> None:
        self.size: list[int] = []
        self.origin: list[str] = []
        self.children: dict[int, tuple] = {}
        self.ident = _UF()
        self.sized = _UF()
        self.frozen: dict[int, str] = {}
        self.divisor: dict[int, int] = {}
        self.members: dict[int, list[int]] = {}  # size root -> leaf atoms of that size class

    def new(self, size: int, origin: str) -> int:
        """A fresh unrefined atom of `size` channels."""
        self.size.append(int(size))
        self.origin.append(origin)
        self.ident.add()
        a = self.sized.add()
        self.members[a] = [a]
        return a

    def label(self, size: int, origin: str) -> tuple:
        """A fresh single-atom label."""
        return (Part(self.new(size, origin)),)

    # ---- structure -------------------------------------------------------------------------
    def expand(self, label: Label) -> Label:
        """Replace refined atoms by their parts (recursively)."""
        if label is None:
            return None
        out: list[Part] = []
        for p in label:
            kids = self.children.get(p.atom)
            if kids is None:
                out.append(p)
            else:
                out.extend(Part(k.atom, k.inner * p.inner) for k in self.expand(kids))
        return tuple(out)

    def width(self, label: Label) -> int:
        """Number of elements a label spans."""
        return sum(self.size[p.atom] * p.inner for p in label) if label else 0

    def leaves(self, label: Label) -> list[int]:
        """Unrefined atoms of a label in order."""
        return [p.atom for p in self.expand(label)] if label else []

    def _members(self, a: int) -> list[int]:
        """Unrefined atoms size-tied to `a` (refinement applies to all of them)."""
        return list(self.members[self.sized.find(a)])

    def _union_sized(self, a: int, b: int) -> int:
        """Merge two size classes with their members, freeze reasons and divisors."""
        ra, rb = self.sized.find(a), self.sized.find(b)
        if ra == rb:
            return ra
        reason = self.frozen.pop(ra, None) or self.frozen.pop(rb, None)
        div = _lcm(self.divisor.pop(ra, 1), self.divisor.pop(rb, 1))
        mem = self.members.pop(ra) + self.members.pop(rb)
        r = self.sized.union(ra, rb)
        self.members[r] = mem
        if reason:
            self.frozen[r] = reason
        if div > 1:
            self.divisor[r] = div
        return r

    def refine(self, a: int, spec: list[tuple[int, int]]) -> None:
        """Split leaf atom `a` (and its size-tied siblings) into parts given as (channels, inner)."""
        assert a not in self.children and sum(n * k for n, k in spec) == self.size[a]
        members = self._members(a)
        self.members[self.sized.find(a)] = []
        made = {m: [self.new(n, self.origin[m]) for n, _ in spec] for m in members}
        for m in members:
            self.children[m] = tuple(Part(c, k) for c, (_, k) in zip(made[m], spec))
        reason, div = self.frozen.get(self.sized.find(a)), self.divisor.get(self.sized.find(a), 1)
        for i in range(len(spec)):
            col = [made[m][i] for m in members]
            for c in col[1:]:
                self._union_sized(col[0], c)
            for m1 in members:
                for m2 in members:
                    if m1 < m2 and self.ident.find(m1) == self.ident.find(m2):
                        self.ident.union(made[m1][i], made[m2][i])
            if reason:
                self.frozen[self.sized.find(col[0])] = reason
            if div > 1 and spec[i][0] % div == 0:
                self.divisor[self.sized.find(col[0])] = div

    # ---- ties -------------------------------------------------------------------------------
    def tie_sizes(self, a: int, b: int) -> None:
        """Require two leaf atoms to keep equal sizes (their channels stay distinct)."""
        if self.size[a] != self.size[b]:
            raise Incompatible(f"atoms of {self.size[a]} and {self.size[b]} channels")
        self._union_sized(a, b)

    def tie_size_labels(self, la: tuple, lb: tuple) -> None:
        """Require two labels of identical structure to keep equal sizes part by part."""
        xa, xb = self.expand(la), self.expand(lb)
        if len(xa) != len(xb) or any(p.inner != q.inner for p, q in zip(xa, xb)):
            raise Incompatible("pieces have different channel structure")
        for p, q in zip(xa, xb):
            self.tie_sizes(p.atom, q.atom)

    def tie(self, la: Label, lb: Label) -> None:
        """Identity-tie two labels element by element, refining atoms where boundaries differ."""
        for _ in range(64):
            xa, xb = self.expand(la), self.expand(lb)
            if self.width(xa) != self.width(xb):
                raise Incompatible(f"widths {self.width(xa)} != {self.width(xb)}")
            if not self._align_once(xa, xb):
                break
        xa, xb = self.expand(la), self.expand(lb)
        for pa, pb in zip(xa, xb):
            if pa.inner != pb.inner or self.size[pa.atom] != self.size[pb.atom]:
                raise Incompatible("parts do not line up after refinement")
            self.tie_sizes(pa.atom, pb.atom)
            self.ident.union(pa.atom, pb.atom)

    def _align_once(self, xa: tuple, xb: tuple) -> bool:
        """Refine one atom so that the two expanded labels share a boundary; True if something changed."""
        ia = ib = 0
        while ia < len(xa) and ib < len(xb):
            pa, pb = xa[ia], xb[ib]
            wa, wb = self.size[pa.atom] * pa.inner, self.size[pb.atom] * pb.inner
            if wa == wb:
                if pa.inner != pb.inner:
                    self._factor(pa, pb)
                    return True
                ia, ib = ia + 1, ib + 1
                continue
            big, small = (pa, pb) if wa > wb else (pb, pa)
            self._cut(big, self.size[small.atom] * small.inner)
            return True
        return False

    def _cut(self, part: Part, at: int) -> None:
        """Split `part`'s atom so that a boundary falls `at` elements into the part."""
        if at % part.inner:
            raise Incompatible(f"boundary at {at} inside a block of {part.inner}")
        n = at // part.inner
        self.refine(part.atom, [(n, 1), (self.size[part.atom] - n, 1)])

    def _factor(self, pa: Part, pb: Part) -> None:
        """Make two equal-width parts with different inner factors comparable."""
        lo, hi = (pa, pb) if pa.inner < pb.inner else (pb, pa)
        if hi.inner % lo.inner:
            raise Incompatible(f"inner factors {pa.inner} and {pb.inner}")
        q = hi.inner // lo.inner
        self.refine(lo.atom, [(self.size[lo.atom] // q, q)])

    # ---- freezing -----------------------------------------------------------------------------
    def freeze(self, label: Label, reason: str) -> None:
        """Mark every atom of a label as not scalable, keeping the first reason."""
        for a in self.leaves(label):
            self.frozen.setdefault(self.sized.find(a), reason)

    def require_divisor(self, label: Label, div: int) -> None:
        """Every atom of the label must keep a multiple of `div` channels."""
        for a in self.leaves(label):
            r = self.sized.find(a)
            self.divisor[r] = _lcm(self.divisor.get(r, 1), div)

    def is_frozen(self, a: int) -> Optional[str]:
        """The freeze reason of a leaf atom's size class, if any."""
        return self.frozen.get(self.sized.find(a))


def _lcm(a: int, b: int) -> int:
    from math import gcd
    return a * b // gcd(a, b)


def concat(labels: Iterable[Label]) -> tuple:
    """Concatenate channel labels."""
    out: list[Part] = []
    for lab in labels:
        out.extend(lab)
    return tuple(out)


def with_inner(label: tuple, k: int) -> tuple:
    """Each element of `label` expanded into `k` consecutive elements (flatten with trailing dims)."""
    return tuple(Part(p.atom, p.inner * k) for p in label)
