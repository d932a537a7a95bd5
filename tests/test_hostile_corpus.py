"""The hostile-input corpus (tests/data/hostile-corpus.jsonl) through the app: each attack gets its answer,
every answer is JSON and none a 5xx, and nothing is delivered. test_deployment.py runs it through nginx."""
import pytest
from support import hostile_corpus

ATTACKS = hostile_corpus()


@pytest.mark.parametrize("attack", ATTACKS, ids=[a["attack"] for a in ATTACKS])
def test_each_attack_is_refused_with_its_code_and_delivers_nothing(options_file, client, smtp_server, attack):
    options_file.write(email={"allowed_mailboxes": "*@partner.example"})
    response = client.post(attack["path"], data=attack["body"], headers=attack["headers"])
    assert response.is_json and response.status_code == attack["http"]
    assert sorted(e["code"] for e in response.get_json()["errors"]) == sorted(attack["codes"])
    assert smtp_server.messages == [] and smtp_server.mail_commands == 0
