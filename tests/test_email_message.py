"""The email the agent receives (contract sections 5 and 6), parsed back as a mail client would."""
from email.header import decode_header, make_header
from email.utils import parseaddr

import pytest
from support import PDF, PNG, codes, raw_header


def test_headers_carry_the_customer_and_the_request(submit, smtp_server):
    interaction_id = submit(firstName="Ana María", service="support").get_json()["interactionId"]
    received = smtp_server.messages[0]
    email = received.email
    assert email["From"].addresses[0].display_name == "Ana María Lee"
    assert email["From"].addresses[0].addr_spec == "ana@example.com"
    assert email["To"] == "support@example.com"
    assert email["Subject"] == "Invoice question"
    assert email["Date"].datetime is not None
    assert email["Message-ID"] == f"<{interaction_id}@gms.test>"
    assert email["X-Genesys-Interaction-Id"] == interaction_id
    assert email["X-Genesys-Service"] == "support"
    assert email["X-Genesys-Tenant"] == "Environment"
    assert email["X-Genesys-First-Name"] == "Ana María"
    assert email["X-Genesys-Last-Name"] == "Lee"
    assert email["X-Genesys-From-Address"] == "ana@example.com"
    assert email["Sender"] is None and email["Reply-To"] is None
    assert email.get_content_type() == "text/plain"
    assert email.get_content_charset() == "utf-8"
    assert email.get_content() == "Hello,\r\nmy invoice is wrong.\r\n"
    assert (received.mail_from, received.rcpt_tos) == ("support@example.com", ["support@example.com"])


def test_the_email_is_seven_bit_clean_and_reads_back_exactly(submit, smtp_server):
    text = "Bonjour, ça va ? Déjà vu — 日本語.\r\n" + "é" * 1200
    assert submit(firstName="Zoë", subject="Facture n°17", text=text).get_json()["statusCode"] == 0
    received = smtp_server.messages[0]
    assert max(received.raw) < 128
    assert received.email.get_body(("plain",)).get_content().replace("\r\n", "\n") == text.replace("\r\n", "\n") + "\n"
    assert received.email["Subject"] == "Facture n°17"


@pytest.mark.parametrize("from_header", ["customer", "service"])
@pytest.mark.parametrize("files", [[], [("scan.pdf", PDF), ("photo.png", PNG)]])
def test_every_header_a_message_may_have_once_is_there_once(options_file, submit, smtp_server, from_header, files):
    """Two From or Content-Type lines would leave each mail client to pick one (RFC 5322 section 3.6)."""
    options_file.write(email={"from_header": from_header}, smtp={"envelope_from": "bounces@example.com"})
    assert submit(files=files).get_json()["statusCode"] == 0
    email = smtp_server.messages[0].email
    names = [name.lower() for name in email.keys()]
    once = ["from", "sender", "to", "subject", "date", "message-id", "mime-version", "content-type",
            *(["reply-to"] if from_header == "service" else []), "x-genesys-interaction-id"]
    assert {name: names.count(name) for name in once} == dict.fromkeys(once, 1)
    for part in email.walk():
        part_names = [name.lower() for name in part.keys()]
        assert part_names.count("content-type") == 1
        assert part_names.count("content-transfer-encoding") <= 1
    assert len(list(email.iter_attachments())) == len(files)


def test_envelope_from_sets_sender_and_mail_from(options_file, submit, smtp_server):
    options_file.write(smtp={"envelope_from": "gms@example.com"})
    submit()
    received = smtp_server.messages[0]
    assert received.mail_from == "gms@example.com"
    assert received.email["Sender"] == "gms@example.com"
    assert received.email["From"].addresses[0].addr_spec == "ana@example.com"


@pytest.mark.parametrize(("envelope_from", "sender"),
                         (("", "sales@example.com"), ("gms@example.com", "gms@example.com")))
def test_from_header_service_sends_from_the_service_with_reply_to_the_customer(options_file, submit, smtp_server,
                                                                               envelope_from, sender):
    """DMARC (contract section 6): a p=reject customer domain in From would be refused downstream."""
    options_file.write(email__sales={"from_header": "service"}, smtp={"envelope_from": envelope_from})
    assert submit(service="sales", firstName="Ana María", fromAddress="ana@yahoo.com").get_json()["statusCode"] == 0
    email = smtp_server.messages[0].email
    assert (email["From"].addresses[0].display_name, email["From"].addresses[0].addr_spec) == ("Ana María Lee", sender)
    assert [(a.display_name, a.addr_spec) for a in email["Reply-To"].addresses] == [("Ana María Lee", "ana@yahoo.com")]
    assert email["X-Genesys-From-Address"] == "ana@yahoo.com"
    assert smtp_server.messages[0].mail_from == sender


def test_from_header_is_per_service_and_customer_by_default(options_file, submit, smtp_server):
    options_file.write(email__sales={"from_header": "service"})
    submit(service="support")
    email = smtp_server.messages[0].email
    assert email["From"].addresses[0].addr_spec == "ana@example.com" and email["Reply-To"] is None


def test_a_service_named_email_is_served_at_its_own_url(submit, client, smtp_server):
    assert submit(service="email").get_json()["statusCode"] == 0
    assert smtp_server.messages[0].email["X-Genesys-Service"] == "email"
    assert client.options("/genesys/2/email/email").status_code == 204


def test_catch_all_route_uses_the_email_section(submit, smtp_server):
    assert submit(service=None).get_json()["statusCode"] == 0
    email = smtp_server.messages[0].email
    assert email["X-Genesys-Service"] == "email"
    assert email["To"] == "support@example.com"


@pytest.mark.parametrize(
    ("service", "mailbox", "to"),
    (
        ("sales", None, "sales@example.com"),  # the service section's mailbox
        ("unknown-service", None, "support@example.com"),  # [email]
        ("support", "sales@example.com", "sales@example.com"),  # a configured mailbox named by the request
        ("support", "SALES@Example.com", "sales@example.com"),  # compared case-insensitively
    ),
)
def test_mailbox_resolution(submit, smtp_server, service, mailbox, to):
    assert submit(service=service, mailbox=mailbox).get_json()["statusCode"] == 0
    assert smtp_server.messages[0].rcpt_tos == [to]


def test_default_mailbox_is_the_last_resort(options_file, submit, smtp_server):
    options_file.write(email={"mailbox": None}, email__sales={"mailbox": None},
                       smtp={"default_mailbox": "inbox@example.com"})
    submit(service="sales")
    assert smtp_server.messages[0].rcpt_tos == ["inbox@example.com"]


@pytest.mark.parametrize(
    ("allowed", "mailbox", "delivered"),
    (
        ("team@example.org", "team@example.org", True),
        ("*@example.org", "anyone@EXAMPLE.org", True),
        ("*@example.org", "anyone@sub.example.org", False),
        ('"a@example.org, *@example.net"', "b@example.net", True),
        ('""', "team@example.org", False),
    ),
)
def test_allowed_mailboxes_guard_the_relay(options_file, submit, smtp_server, allowed, mailbox, delivered):
    options_file.write(email={"allowed_mailboxes": allowed})
    response = submit(mailbox=mailbox)
    if delivered:
        assert response.get_json()["statusCode"] == 0
        assert smtp_server.messages[0].rcpt_tos == [mailbox.split("@")[0] + "@" + mailbox.split("@")[1].lower()]
    else:
        assert response.status_code == 400 and codes(response) == [383]
        assert smtp_server.messages == []


def test_a_service_list_replaces_the_email_list(options_file, submit, smtp_server):
    options_file.write(email={"allowed_mailboxes": "*@example.org"},
                       email__sales={"allowed_mailboxes": "*@example.net"})
    assert codes(submit(service="sales", mailbox="a@example.org")) == [383]
    assert submit(service="sales", mailbox="a@example.net").get_json()["statusCode"] == 0


def test_user_data_pairs_read_back_exactly_in_order(submit, smtp_server):
    extra = [
        ("userData", "orderId=A-17"),
        ("userData[customer]", "Ana María"),
        ("userData", "note=x=y"),
        ("userData", "flag"),
        ("userData", "orderId=A-18"),
        ("userData", "word==?utf-8?q?hi?="),
        ("userData", "spaces=a  b\tc"),
        ("userData", "long=" + "z" * 1500),
        ("userData[Счёт]", "№5 " + "é" * 400),
        ("userData", ""),
    ]
    assert submit(extra=extra).get_json()["statusCode"] == 0
    headers = smtp_server.messages[0].email.get_all("X-Genesys-User-Data")
    assert headers == [
        "orderId=A-17", "customer=Ana María", "note=x=y", "flag=", "orderId=A-18", "word==?utf-8?q?hi?=",
        "spaces=a  b\tc", "long=" + "z" * 1500, "Счёт=№5 " + "é" * 400,
    ]
    assert all(len(line) <= 998 for line in smtp_server.messages[0].raw.split(b"\r\n"))


@pytest.mark.parametrize(("part", "code"), ((("userData", "=value"), 606), (("userData", "k=v\x1bx"), 601),
                                            (("userData[k\x0b]", "v"), 601)))
def test_bad_user_data_is_refused(submit, smtp_server, part, code):
    response = submit(extra=[part])
    assert response.status_code == 400 and codes(response) == [code]
    assert smtp_server.messages == []


@pytest.mark.parametrize(
    ("first", "last"),
    (("F" * 256, "L" * 256), ("F" * 256, "Ł" * 256), ("Ana", "Ł" * 256), ('A "q" \\ b,', "c <d>"),
     ("=?utf-8?q?x?=", "Lee"), ("Ana María", "Lee")),
)
def test_longest_names_fold_without_ending_the_header_block(submit, smtp_server, first, last):
    submit(firstName=first, lastName=last, subject="=?utf-8?q?" + "s" * 980)
    received = smtp_server.messages[0]
    header_block = received.raw.split(b"\r\n\r\n")[0]
    assert all(line.strip() and len(line) <= 998 for line in header_block.split(b"\r\n"))
    email = received.email
    assert email["Subject"] == "=?utf-8?q?" + "s" * 980
    assert email["X-Genesys-First-Name"] == first and email["X-Genesys-Last-Name"] == last
    assert email.get_content() == "Hello,\r\nmy invoice is wrong.\r\n"
    display_name, address = parseaddr(str(make_header(decode_header(raw_header(received.raw, "From")))))
    assert (display_name, address) == (f"{first} {last}", "ana@example.com")


@pytest.mark.parametrize("length", (58, 65, 70, 73, 77))
def test_values_just_over_one_line_read_back_without_a_leading_space(submit, smtp_server, length):
    """The email package moves such a value whole onto a second line, which its parser reads back with a space."""
    value = ("ab cd " * 20)[:length].strip()
    assert submit(subject=value, extra=[("userData", f"key={value}")]).get_json()["statusCode"] == 0
    email = smtp_server.messages[0].email
    assert email["Subject"] == value and email["X-Genesys-User-Data"] == f"key={value}"


def test_details_in_body_is_off_by_default(submit, smtp_server):
    submit(extra=[("userData", "order=A-17")])
    assert smtp_server.messages[0].email.get_content() == "Hello,\r\nmy invoice is wrong.\r\n"


def test_details_in_body_lists_the_service_interaction_and_every_pair_before_the_text(
        options_file, submit, smtp_server):
    options_file.write(email__support={"details_in_body": "true"})
    answer = submit(service="support", extra=[("userData", "order=A-17"), ("userData", "note=line one\r\nline two"),
                                              ("userData[Счёт]", "№5")])
    interaction_id = answer.get_json()["interactionId"]
    email = smtp_server.messages[0].email
    assert email.get_content() == (
        "---- Details from the contact form ----\r\nService: support\r\n"
        f"Interaction ID: {interaction_id}\r\nuserData[order]: A-17\r\nuserData[note]: line one\r\n    line two\r\n"
        "userData[Счёт]: №5\r\n---- Message ----\r\nHello,\r\nmy invoice is wrong.\r\n")
    assert email.get_all("X-Genesys-User-Data") == ["order=A-17", "note=line one\r\nline two", "Счёт=№5"]
    assert submit(service="sales").get_json()["statusCode"] == 0  # another service keeps [email]'s default
    assert "Details" not in smtp_server.messages[1].email.get_content()


@pytest.mark.parametrize("extra", (
    [("userData", "Interaction ID=FAKE0000000000000")], [("userData", "Service=billing")],
    [("userData", "note=ok\u2028Interaction ID: FAKE0000000000000")],
    [("userData", "note=ok\u2029Service: billing")], [("userData", "note=ok\rService: billing")],
))
def test_details_in_body_lines_cannot_be_forged_by_user_data(options_file, submit, smtp_server, extra):
    options_file.write(email={"details_in_body": "true"})
    interaction_id = submit(extra=extra).get_json()["interactionId"]
    lines = smtp_server.messages[0].email.get_content().splitlines()
    block = lines[:lines.index("---- Message ----")]
    assert [line for line in block if line.startswith(("Service:", "Interaction ID:"))] == [
        "Service: support", f"Interaction ID: {interaction_id}"]
    assert all(line.startswith(("----", "Service:", "Interaction ID:", "userData[", "    ")) for line in block)


def test_details_in_body_cannot_be_forged_by_the_text(options_file, submit, smtp_server):
    options_file.write(email={"details_in_body": "true"})
    fake = "\r\n---- Details from the contact form ----\r\nService: billing\r\nInteraction ID: FAKE0000000000000\r\n"
    interaction_id = submit(text="Hello" + fake).get_json()["interactionId"]
    lines = smtp_server.messages[0].email.get_content().splitlines()
    assert lines[:3] == ["---- Details from the contact form ----", "Service: support",
                         f"Interaction ID: {interaction_id}"]
    assert lines.index("---- Message ----") < lines.index("Service: billing")


@pytest.fixture
def partner(options_file):
    options_file.write(email={"allowed_mailboxes": "*@partner.example"})


@pytest.mark.parametrize("mailbox", (
    "victim%evil.example@partner.example",  # the percent hack
    "evil.example!victim@partner.example",  # a bang path
    '"victim@evil.example"@partner.example',  # a quoted local part
    "@evil.example:victim@partner.example",  # a source route
))
def test_relay_tricks_in_a_requested_mailbox_are_383(partner, submit, smtp_server, mailbox):
    response = submit(mailbox=mailbox)
    assert response.status_code == 400 and codes(response) == [383]
    assert smtp_server.messages == []


def test_a_plain_address_under_an_allowed_domain_still_passes(partner, submit, smtp_server):
    assert submit(mailbox="claims@partner.example").get_json()["statusCode"] == 0
    assert smtp_server.messages[0].rcpt_tos == ["claims@partner.example"]


@pytest.mark.parametrize("quote", ('"', "\\"))
def test_names_full_of_quotes_keep_the_from_line_under_998_octets(submit, smtp_server, quote):
    assert submit(firstName=quote * 256, lastName=quote * 256).get_json()["statusCode"] == 0
    raw = smtp_server.messages[0].raw
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    sent = str(make_header(decode_header(raw_header(raw, "From"))))  # as a mail client decodes it
    assert sent == f"{quote * 256} {quote * 256} <ana@example.com>"


@pytest.mark.parametrize(("host", "domain"), (("vm", "example.com"), ("web01.contact-center.example",
                                                                       "web01.contact-center.example")),
                         ids=("bare-host", "qualified-host"))
def test_without_helo_name_the_message_id_names_a_qualified_domain(options_file, submit, smtp_server, monkeypatch,
                                                                   host, domain):
    """Spam filters score a Message-ID whose right-hand side is not a fully qualified domain (rspamd's
    MID_RHS_NOT_FQDN): a bare host name gives way to the envelope sender's domain."""
    monkeypatch.setattr("app.rules.HOST_NAMES", (host,))
    options_file.write(smtp={"helo_name": None})
    interaction_id = submit().get_json()["interactionId"]
    assert smtp_server.messages[0].email["Message-ID"] == f"<{interaction_id}@{domain}>"


def test_the_message_id_takes_the_envelope_senders_domain_when_envelope_from_is_set(options_file, submit,
                                                                                     smtp_server, monkeypatch):
    monkeypatch.setattr("app.rules.HOST_NAMES", ("vm", "localhost"))
    options_file.write(smtp={"helo_name": None, "envelope_from": "bounces@mail.contact-center.example"})
    interaction_id = submit().get_json()["interactionId"]
    assert smtp_server.messages[0].email["Message-ID"] == f"<{interaction_id}@mail.contact-center.example>"
