"""H in the benchmark: a Flask endpoint that answers a constant JSON, the framework's ceiling."""
from flask import Flask, jsonify, request

app = Flask(__name__)


@app.post("/genesys/2/email/<service>")
def send(service):
    request.get_data()  # read the body, as any endpoint must, but parse nothing
    return jsonify(statusCode=0, interactionId="0000000000000000")
