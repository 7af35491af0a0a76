"""A streaming handler: sends the request's text back one word at a time (as a language
model sends tokens), with ``send_intermediate_predict_response``; the last word is the
handler's return value. HTTP clients get one chunk per word, gRPC StreamPredictions clients
one message per word."""

import time

from ts.handler_utils.utils import send_intermediate_predict_response

PAUSE_S = 0.1  # between words, so that the stream is visible


def handle(data, context):
    if data is None:  # the load-time call
        return None
    texts = []
    for row in data:
        value = row.get("data") or row.get("body") or b""
        texts.append((value.decode("utf-8", "replace") if isinstance(value, (bytes, bytearray))
                      else str(value)).split() or [""])
    longest = max(len(words) for words in texts)
    for i in range(longest - 1):
        ids = {idx: context.get_request_id(idx) for idx, words in enumerate(texts)
               if i < len(words) - 1}
        chunks = [words[i] + " " if i < len(words) - 1 else "" for words in texts]
        send_intermediate_predict_response(chunks, ids, "Intermediate Prediction success",
                                           200, context)
        time.sleep(PAUSE_S)
    return [words[-1] for words in texts]
