"""Rendezvous hashing: each file to one live member; only the files of a member that left
move, and a member that joins takes only the files it wins."""

from collections import Counter

from nfs_watcher_uploader.coord.names import new_incarnation
from nfs_watcher_uploader.coord.rendezvous import file_key, owner_of

FILES = [file_key("s1", f"cam{i % 4}/rec{i}.bin") for i in range(3000)]


def _owners(members: list[str]) -> dict[bytes, str | None]:
    return {key: owner_of(key, members) for key in FILES}


def test_rendezvous_moves_only_the_files_of_the_member_that_left() -> None:
    members = [new_incarnation() for _ in range(4)]
    before = _owners(members)
    gone = members[2]
    after = _owners([m for m in members if m != gone])
    moved = {k for k in FILES if before[k] != after[k]}
    assert moved == {k for k in FILES if before[k] == gone}
    assert all(after[k] != gone for k in FILES)


def test_a_member_that_joins_takes_only_the_files_it_wins() -> None:
    members = [new_incarnation() for _ in range(3)]
    before = _owners(members)
    newcomer = new_incarnation()
    after = _owners([*members, newcomer])
    assert all(after[k] in (before[k], newcomer) for k in FILES)
    assert sum(after[k] == newcomer for k in FILES) > 0


def test_every_member_computes_the_same_owner_whatever_the_order_of_the_list() -> None:
    members = [new_incarnation() for _ in range(5)]
    assert _owners(members) == _owners(list(reversed(members)))


def test_files_spread_evenly_over_members() -> None:
    members = [new_incarnation() for _ in range(3)]
    shares = Counter(_owners(members).values())
    assert all(abs(n - 1000) < 150 for n in shares.values()), shares


def test_a_path_that_is_not_utf8_has_an_owner_and_no_member_means_no_owner() -> None:
    odd = file_key("s", b"rec\xff.bin".decode("utf-8", "surrogateescape"))
    assert owner_of(odd, ["a", "b"]) in ("a", "b")
    assert owner_of(odd, []) is None
