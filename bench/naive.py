"""The naive script a user writes instead of this service: N in the benchmark.

Parse the form, build an EmailMessage with the default policy, open a new SMTP connection, send.
No validation, no limits, no logs, no metrics.
"""
import os
import smtplib
from email.message import EmailMessage

from flask import Flask, jsonify, request

app = Flask(__name__)


@app.post("/genesys/2/email/<service>")
def send(service):
    message = EmailMessage()
    message["From"] = f'{request.form["firstName"]} {request.form["lastName"]} <{request.form["fromAddress"]}>'
    message["To"] = "support@example.com"
    message["Subject"] = request.form["subject"]
    message.set_content(request.form["text"])
    for upload in request.files.getlist("files"):
        message.add_attachment(upload.read(), maintype="application", subtype="octet-stream",
                               filename=upload.filename)
    with smtplib.SMTP(os.environ["SMTP_HOST"], int(os.environ["SMTP_PORT"])) as smtp:
        smtp.send_message(message)
    return jsonify(statusCode=0, interactionId="NAIVE")
