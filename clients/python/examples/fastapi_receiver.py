"""Receive dfguard's job callbacks: verify the signature, drop repeats, hand the verdict on."""

import os

from dfguard_client.webhooks import WebhookVerificationError, verify_callback
from fastapi import FastAPI, HTTPException, Request

SECRETS = os.environ["DFGUARD_CALLBACK_SECRETS"].split(",")  # "new,old" while rotating
app = FastAPI()
seen: set[str] = set()  # in production: a unique key in your database
verdicts: list[dict] = []  # in production: your queue or table


@app.post("/dfguard/callback")
async def dfguard_callback(request: Request) -> dict[str, str]:
    body = await request.body()  # the raw bytes: the signature covers them exactly
    try:
        verify_callback(SECRETS, request.headers, body)
    except WebhookVerificationError as exc:
        raise HTTPException(401, str(exc)) from None
    job_id = request.headers["x-dfguard-job-id"]
    if job_id not in seen:  # delivery is at least once: retries carry the same job id
        seen.add(job_id)
        verdicts.append(await request.json())
    return {"status": "received"}
