"""Whose conversation is whose: another principal's session is absent to everyone else."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
from flask.testing import FlaskClient

from agent.base import errors
from agent.base.clock import utc_now
from agent.turn.ownership import require_owner
from local.demo_model import DemoModelServer
from tests.support.constants import ALICE_KEY, API_KEYS, BOB_KEY
from tests.support.openapi_contract import assert_conforms
from tests.support.stores import service_of

ALICE = {"X-API-Key": ALICE_KEY}
BOB = {"X-API-Key": BOB_KEY}


@pytest.fixture
def two(make_client: Callable[..., FlaskClient]) -> FlaskClient:
    return make_client(auth_mode="api_key", auth_api_keys=API_KEYS)


def say(client: FlaskClient, who: dict[str, str], text: str, session_id: str):
    return client.post("/chat", json={"message": text, "session_id": session_id}, headers=who)


def comparable(response) -> tuple[int, dict, set[str]]:
    headers = {k for k in response.headers.keys() if k != "X-Request-Id"}  # noqa: SIM118
    return response.status_code, response.get_json(), headers


def test_the_owner_is_recorded(two: FlaskClient) -> None:
    assert say(two, ALICE, "mine", "a1").status_code == 200
    assert service_of(two).store.owner_of("a1", utc_now()) == "alice"


def test_reading_someone_elses_session_looks_exactly_like_absence(two: FlaskClient) -> None:
    assert say(two, ALICE, "secret plans", "a2").status_code == 200
    foreign = two.get("/sessions/a2", headers=BOB)
    absent = two.get("/sessions/never-used", headers=BOB)
    assert comparable(foreign) == comparable(absent)
    assert foreign.status_code == 404 and "secret" not in foreign.get_data(as_text=True)
    assert_conforms("GET", "/sessions/a2", 404, foreign.get_json(), foreign.headers)


def test_deleting_someone_elses_session_is_404_and_deletes_nothing(two: FlaskClient) -> None:
    assert say(two, ALICE, "keep me", "a3").status_code == 200
    before = two.get("/sessions/a3", headers=ALICE).get_json()
    foreign = two.delete("/sessions/a3", headers=BOB)
    assert comparable(foreign) == comparable(two.delete("/sessions/never-used", headers=BOB))
    assert two.get("/sessions/a3", headers=ALICE).get_json() == before


def test_continuing_someone_elses_session_is_409_taken_and_changes_nothing(
    two: FlaskClient, model: DemoModelServer
) -> None:
    assert say(two, ALICE, "hello", "a4").status_code == 200
    before = two.get("/sessions/a4", headers=ALICE).get_json()
    calls = model.request_count
    response = say(two, BOB, "let me in", "a4")
    assert response.status_code == 409
    assert response.get_json()["error"]["code"] == "session_id_taken"
    assert "Retry-After" not in response.headers
    assert_conforms("POST", "/chat", 409, response.get_json(), response.headers)
    assert model.request_count == calls  # the agent never ran
    assert two.get("/sessions/a4", headers=ALICE).get_json() == before


def test_a_session_being_created_is_taken_not_busy_for_others(
    two: FlaskClient, model: DemoModelServer
) -> None:
    model.control(delay_seconds=1.0)
    app = two.application
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(lambda: say(app.test_client(), ALICE, "first", "a5"))
        time.sleep(0.4)  # alice's first turn holds the new session
        response = say(app.test_client(), BOB, "me too", "a5")
        assert first.result().status_code == 200
    assert response.get_json()["error"]["code"] == "session_id_taken"


def test_an_expired_session_is_free_for_anyone(make_client: Callable[..., FlaskClient]) -> None:
    client = make_client(auth_mode="api_key", auth_api_keys=API_KEYS, session_ttl_seconds=1)
    assert say(client, ALICE, "old", "a6").status_code == 200
    time.sleep(1.2)
    response = say(client, BOB, "new", "a6")
    assert response.status_code == 200 and response.get_json()["new_session"] is True
    assert client.get("/sessions/a6", headers=ALICE).status_code == 404
    items = client.get("/sessions/a6", headers=BOB).get_json()["items"]
    assert [i["content"] for i in items if i.get("role") == "user"] == ["new"]


def test_a_session_without_owner_belongs_to_nobody(two: FlaskClient) -> None:
    # Written by library use of the store (or before owners existed).
    store = service_of(two).store
    now = utc_now()
    claim = store.claim("legacy", now, now.replace(year=now.year + 1))
    store.commit(claim, [{"role": "user", "content": "old"}], now)
    assert two.get("/sessions/legacy", headers=ALICE).status_code == 404
    assert say(two, ALICE, "hi", "legacy").get_json()["error"]["code"] == "session_id_taken"


def test_require_owner_is_the_check_for_other_routes(two: FlaskClient) -> None:
    assert say(two, ALICE, "hello", "a7").status_code == 200
    store = service_of(two).store
    require_owner(store, "a7", "alice")  # no error
    for principal, session_id in (("bob", "a7"), ("alice", "never-used")):
        with pytest.raises(errors.ApiError) as caught:
            require_owner(store, session_id, principal)
        assert (caught.value.status, caught.value.code) == (404, "session_not_found")
