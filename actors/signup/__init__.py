"""The user-signup workflow and the integrations its steps use."""

from userflow.actors.signup.records import EMAIL_VERIFIED, UserStatus
from userflow.actors.signup.workflow import NAME, SIGNUP, SignupServices

__all__ = ["EMAIL_VERIFIED", "NAME", "SIGNUP", "SignupServices", "UserStatus"]
