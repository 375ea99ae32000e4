"""Stored responses of the Responses API (the wire translation lives in ``api/responses``)."""
