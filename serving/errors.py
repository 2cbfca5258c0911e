"""The one error type a request can end in; the server renders it as TF Serving does."""

from http import HTTPStatus

MAX_MESSAGE_CHARS = 500  # a message may quote the request: never echo a megabyte back


def shorten(message: str) -> str:
  if len(message) <= MAX_MESSAGE_CHARS:
    return message
  return f"{message[:MAX_MESSAGE_CHARS]}... ({len(message):,} characters)"


class RequestError(Exception):
  """A refused request: `status` is the HTTP code, str(self) the {"error": ...} message."""

  def __init__(self, status: HTTPStatus, message: str):
    super().__init__(shorten(message))
    self.status = status

  def for_image(self, index: int) -> "RequestError":
    """The same error, naming which image of the request it is about."""
    return RequestError(self.status, f"image {index}: {self}")


def bad_request(message: str) -> RequestError:
  return RequestError(HTTPStatus.BAD_REQUEST, message)


def too_large(message: str) -> RequestError:
  return RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, message)


def not_found(message: str) -> RequestError:
  return RequestError(HTTPStatus.NOT_FOUND, message)
