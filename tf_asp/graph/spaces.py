"""Channel spaces: which tensors and variable axes hold the same channels.

A *channel space* is an ordered set of channels that several tensors (their
channel axes, flattened) and variables (some of their axes, flattened) hold
in the same order, so one permutation must be applied to all of them.
`ChannelSpaces` is the union-find the graph walk builds them with, plus:

- *concatenation*: a space can be the concatenation of other spaces (the
  output of a channel-axis `ConcatV2` is its inputs' spaces side by side; an
  attention value projection's output is one space per head). A permutation
  of such a space permutes each part within its own segment, so the *leaves*
  (spaces that are not concatenations) are what a search permutes;
- *pins*: a space that cannot be permuted (an op mixes its channels, it is a
  model input or output) carries the reasons; pinning a concatenation pins
  all its leaves.

```python
spaces = ChannelSpaces()
for key, size in [("x", 64), ("a", 32), ("b", 32), ("c", 32)]:
    spaces.add(key, size)
spaces.concatenate("x", ["a", "b"])        # x = [a | b]
spaces.union("b", "c")                      # c holds b's channels
spaces.leaves("x")                          # [("a", 0), ("b", 32)] (roots)
spaces.pin("x", "model output")             # a and b cannot be permuted
```
"""


class ChannelSpaces:
    """Union-find over channel spaces that may be concatenations of others."""

    def __init__(self):
        self._parent = {}
        self._size = {}
        self._parts = {}  # root -> keys of the spaces it concatenates
        self._pins = {}  # root -> reasons it cannot be permuted

    def add(self, key, size):
        """Registers `key` (any hashable) as a space of `size` channels."""
        if key not in self._parent:
            self._parent[key] = key
            self._size[key] = int(size)
        return key

    def __contains__(self, key):
        return key in self._parent

    def size(self, key):
        return self._size[self.find(key)]

    def find(self, key):
        """The root key of `key`'s space."""
        root = key
        while self._parent[root] != root:
            root = self._parent[root]
        while self._parent[key] != root:
            self._parent[key], key = root, self._parent[key]
        return root

    def union(self, a, b):
        """Makes `a` and `b` one space; False (nothing joined) if their sizes differ.

        Two concatenations join part by part when their parts have the same
        sizes; otherwise the joined space is pinned.
        """
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return True
        if self._size[ra] != self._size[rb]:
            return False
        self._parent[ra] = rb
        if ra in self._pins:
            self._pins.setdefault(rb, []).extend(self._pins.pop(ra))
        parts = self._parts.pop(ra, None)
        if parts is not None:
            self._set_parts(rb, parts)
        return True

    def concatenate(self, key, parts):
        """Declares `key`'s space the concatenation of the `parts`' spaces.

        Parts of no channels are left out; a single part is the space itself.
        """
        parts = [p for p in parts if self.size(p) > 0]
        if sum(self.size(p) for p in parts) != self.size(key):
            raise ValueError(f"parts of {[self.size(p) for p in parts]} channels do not make {key}")
        if len(parts) == 1:
            self.union(key, parts[0])
        elif parts:
            self._set_parts(self.find(key), parts)

    def split(self, key, count):
        """`key`'s space as `count` equal, consecutive parts: their keys.

        Makes the parts unless the space already is such a concatenation;
        returns None (and pins the space) when it is another one.
        """
        root = self.find(key)
        size = self._size[root]
        if count <= 1:
            return [root]
        if size % count:
            self.pin(root, f"{size} channels do not split into {count} equal parts")
            return None
        parts = self._parts.get(root)
        if parts is None:
            parts = [self.add(("part", root, i), size // count) for i in range(count)]
            self._parts[root] = parts
            return list(parts)
        if len(parts) == count and len({self.size(p) for p in parts}) == 1:
            return list(parts)
        self.pin(root, _conflict([self.size(p) for p in parts], [size // count] * count))
        return None

    def pin(self, key, reason):
        """Marks `key`'s space (and so all its leaves) as not permutable."""
        self._pins.setdefault(self.find(key), []).append(reason)

    def pinned(self, key):
        """Whether `key`'s whole space is pinned (so it is never permuted)."""
        return bool(self._pins.get(self.find(key)))

    def leaves(self, key):
        """`(leaf root, offset)` of every leaf of `key`'s space, in channel order."""
        result = []

        def walk(key, offset):
            root = self.find(key)
            parts = self._parts.get(root)
            if parts is None:
                result.append((root, offset))
                return
            for part in parts:
                walk(part, offset)
                offset += self.size(part)

        walk(key, 0)
        return result

    def leaf_pins(self):
        """Leaf root -> the reasons it cannot be permuted: its own, then those
        of every concatenation it is part of."""
        pins = {
            root: list(reasons) for root, reasons in self._pins.items() if root not in self._parts
        }
        for root, reasons in self._pins.items():
            if root in self._parts:
                for leaf, _ in self.leaves(root):
                    pins.setdefault(leaf, []).extend(reasons)
        return pins

    def _set_parts(self, root, parts):
        existing = self._parts.get(root)
        if existing is None:
            self._parts[root] = list(parts)
            return
        sizes = [self.size(p) for p in existing], [self.size(p) for p in parts]
        if sizes[0] != sizes[1]:
            self.pin(root, _conflict(*sizes))
            return
        for a, b in zip(existing, parts):
            self.union(a, b)


def format_sizes(sizes):
    """`[64, 32, 32, 32]` -> `'64+3x32'`: segment sizes, runs shortened."""
    runs = []
    for size in sizes:
        if runs and runs[-1][0] == size:
            runs[-1][1] += 1
        else:
            runs.append([size, 1])
    return "+".join(f"{n}x{s}" if n > 1 else f"{s}" for s, n in runs)


def _conflict(first, second):
    return f"its channels are split two ways ({format_sizes(first)} and {format_sizes(second)})"
