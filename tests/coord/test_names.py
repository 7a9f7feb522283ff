"""The control container's name: derived from the data container, valid under Azure's rules,
never the data container itself."""

import pytest

from nfs_watcher_uploader.coord.names import (
    CONTAINER_NAME_RE,
    control_container_name,
    incarnation_of,
    new_incarnation,
)


@pytest.mark.parametrize(
    "data",
    ["uploads", "a" * 63, "a-b-" + "c" * 59, "$root", "$web", "abc", "x" * 59 + "-yzz"],
)
def test_a_derived_control_container_name_is_valid_and_not_the_data_container(data: str) -> None:
    name = control_container_name(data)
    assert CONTAINER_NAME_RE.fullmatch(name), name
    assert 3 <= len(name) <= 63 and "--" not in name
    assert name != data and name.endswith("-ctl")


def test_two_long_data_containers_that_differ_only_at_the_end_never_share_one() -> None:
    a, b = "a" * 62 + "b", "a" * 62 + "c"
    assert control_container_name(a) != control_container_name(b)


def test_a_short_name_is_the_data_container_with_ctl() -> None:
    assert control_container_name("uploads") == "uploads-ctl"


@pytest.mark.parametrize("bad", ["Upper", "a--b", "-ab", "ab-", "ab", "a" * 64, "a_b", "a b"])
def test_a_configured_name_that_azure_refuses_is_refused_naming_the_setting(bad: str) -> None:
    with pytest.raises(ValueError, match="APP_AZURE_CONTROL_CONTAINER"):
        control_container_name("uploads", bad)


def test_the_data_container_is_refused_as_the_control_container() -> None:
    with pytest.raises(ValueError, match="another container"):
        control_container_name("uploads", "uploads")
    assert control_container_name("uploads", "site-control") == "site-control"


def test_only_blobs_named_after_an_incarnation_are_members() -> None:
    inc = new_incarnation()
    assert incarnation_of(f"members/{inc}") == inc
    for name in (f"members/{inc.upper()}", f"members/{inc}/x", "members/", f"other/{inc}"):
        assert incarnation_of(name) is None


@pytest.mark.adversarial
@pytest.mark.parametrize("special", ["$root", "$web", "$logs"])
def test_a_special_data_container_never_shares_a_control_container_with_its_plain_namesake(
    special: str,
) -> None:
    """Review of issue 24, finding 3. `$root` and `root` (or `$web` and `web`, `$logs` and
    `logs`) both derived `root-ctl`: two deployments on one account shared one roster and one
    session state, each adopting the other's members and ending the other's sessions."""
    plain = special.lstrip("$")
    assert control_container_name(special) != control_container_name(plain)
    assert CONTAINER_NAME_RE.fullmatch(control_container_name(special))
