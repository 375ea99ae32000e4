"""English: the reference catalogue; every key exists here."""

from __future__ import annotations

MESSAGES: dict[str, str] = {
    # ------------------------------------------------------------------ mails
    "mail.verify_email.subject": "Your {site} verification code",
    "mail.verify_email.body": (
        "Hello,\n"
        "\n"
        "Your code to confirm this email address on {site} is:\n"
        "\n"
        "    {code}\n"
        "\n"
        "Enter it on the page where you signed up. It is valid for {minutes} minutes.\n"
        "\n"
        "If you did not ask for this, ignore this message: no account will use this address.\n"
        "\n"
        "— {site}\n"
    ),
    "mail.password_reset.subject": "Reset your {site} password",
    "mail.password_reset.body": (
        "Hello,\n"
        "\n"
        "Someone asked to reset the password of your {site} account. Your code is:\n"
        "\n"
        "    {code}\n"
        "\n"
        "Enter it on the password reset page, then choose a new password. "
        "It is valid for {minutes} minutes.\n"
        "\n"
        "If you did not ask for this, ignore this message: your password stays as it is. "
        "Never share this code; nobody from {site} will ask you for it.\n"
        "\n"
        "— {site}\n"
    ),
    "mail.email_change.subject": "Confirm your new {site} email address",
    "mail.email_change.body": (
        "Hello,\n"
        "\n"
        "You asked to use this address for your {site} account. Your code is:\n"
        "\n"
        "    {code}\n"
        "\n"
        "Enter it in your account settings to confirm the change. "
        "It is valid for {minutes} minutes.\n"
        "\n"
        "If you did not ask for this, ignore this message: the account keeps its current "
        "address.\n"
        "\n"
        "— {site}\n"
    ),
    "mail.invitation.subject": "{inviter} invited you to {site}",
    "mail.invitation.body": (
        "Hello,\n"
        "\n"
        "{inviter} has invited you to {site}. To accept, open this link and create your "
        "account:\n"
        "\n"
        "    {url}\n"
        "\n"
        "The invitation is valid for {days} days.\n"
        "\n"
        "If you were not expecting it, ignore this message: nothing happens unless you use "
        "the link.\n"
        "\n"
        "— {site}\n"
    ),
    "mail.soft_limit.subject": "{site}: you have reached your spending alert",
    "mail.soft_limit.body": (
        "Hello,\n"
        "\n"
        "Your {site} account has spent {spent} {period}, reaching the alert you set at "
        "{limit}.\n"
        "\n"
        "This is only a heads-up: your keys keep working. To change the alert or add "
        "credit, sign in to {site}.\n"
        "\n"
        "— {site}\n"
    ),
    "mail.account_flagged.subject": "Your {site} account has been flagged",
    "mail.account_flagged.body": (
        "Hello,\n"
        "\n"
        "Your {site} account has been flagged as abnormal: {reason}.\n"
        "\n"
        "Your API keys are paused until the account is reviewed. Contact {support} to have "
        "it reviewed.\n"
        "\n"
        "— {site}\n"
    ),
    # ------------------------------------------------------------------ text messages
    # One SMS segment: under 160 characters.
    "sms.verify_phone": (
        "[{site}] Your verification code is {code}. It expires in {minutes} minutes. "
        "If you did not ask for it, ignore this message."
    ),
    # ------------------------------------------------------------------ periods (soft_limit)
    "period.day": "today",
    "period.week": "this week",
    "period.month": "this month",
    "period.all": "so far",
    # ------------------------------------------------------------------ refusals
    "error.signup_closed": "Sign-up is closed. Ask an administrator for an invitation.",
    "error.email_domain_not_allowed": (
        "Sign-up is open to some email domains only, and {domain} is not one of them. "
        "Use your work address."
    ),
    "error.email_domain_blocked": (
        "Email addresses at {domain} cannot be used here. Use another address."
    ),
    "error.email_disposable": (
        "{domain} is a disposable email service. Use an address you will keep."
    ),
    "error.email_taken": (
        "An account with this email address already exists. Sign in, or reset your password "
        "if you have forgotten it."
    ),
    "error.invalid_email": "That does not look like an email address. Check it and try again.",
    "error.weak_password": (
        "That password is too weak. Choose one of at least {min_length} characters that is "
        "not a common password."
    ),
    "error.invalid_phone": (
        "That does not look like a mobile number. Include the country code, like +86 138 0013 8000."
    ),
    "error.phone_taken": (
        "This phone number is already used by another account. Use another number."
    ),
    "error.invalid_birthday": "That date of birth is not valid. Check it and try again.",
    "error.invalid_code": (
        "That code is not right. You have {tries_left} tries left with this code."
    ),
    "error.code_expired": "That code has expired. Ask for a new one.",
    "error.code_tries_exceeded": "Too many wrong tries with that code. Ask for a new one.",
    "error.no_code_pending": "No code is waiting to be entered. Ask for a new one.",
    "error.resend_too_soon": (
        "A code was sent a moment ago. You can ask for another in {seconds} seconds."
    ),
    "error.too_many_codes": "Too many codes were asked for. Try again in {seconds} seconds.",
    "error.too_many_signups": (
        "Too many sign-ups from your network. Try again in {seconds} seconds."
    ),
    "error.too_many_attempts": (
        "Too many verification attempts from here. Try again in {seconds} seconds."
    ),
    "error.too_many_signins": "Too many sign-in attempts. Try again in {seconds} seconds.",
    "error.invalid_credentials": "The email address or the password is not right.",
    "error.account_locked": (
        "Too many failed sign-ins: this account is locked for {minutes} minutes. Try again "
        "then, or reset your password."
    ),
    "error.account_flagged": (
        "Your account has been flagged as abnormal: {reason}. Your keys are paused. "
        "Contact {support} to have it reviewed."
    ),
    "error.account_suspended": (
        "Your account has been suspended: {reason}. Contact {support} if you think this is "
        "a mistake."
    ),
    "error.email_not_verified": ("Confirm your email address first: enter the code we sent to it."),
    "error.phone_not_verified": (
        "Confirm your phone number first: enter the code we sent to it by text message."
    ),
    "error.profile_incomplete": "Complete your profile (name and date of birth) first.",
    "error.csrf_failed": "This form has expired. Reload the page and try again.",
    "error.not_signed_in": "Sign in to continue.",
    "error.invitation_invalid": (
        "This invitation is not valid: it has expired or has been used. Ask for a new one."
    ),
    "error.oidc_failed": (
        "Signing in with your organisation's account did not work. Try again, or sign in "
        "with your email address and password."
    ),
    "error.oidc_email_unverified": (
        "Your organisation's account has no verified email address, so it cannot be used to "
        "sign in here."
    ),
    "error.session_expired": "Your session has expired. Sign in again.",
    "error.delivery_failed": (
        "We could not send the message just now. Try again in a few minutes."
    ),
}
