"""The user-signup workflow and the integrations its steps use."""

from userflow.actors.signup.workflow import EMAIL_VERIFIED, NAME, SIGNUP, SignupServices, UserStatus

__all__ = ["EMAIL_VERIFIED", "NAME", "SIGNUP", "SignupServices", "UserStatus"]
