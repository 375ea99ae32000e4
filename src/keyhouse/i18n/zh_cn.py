"""简体中文 (zh-CN). A key missing here falls back to English."""

from __future__ import annotations

MESSAGES: dict[str, str] = {
    # ------------------------------------------------------------------ mails
    "mail.verify_email.subject": "{site} 邮箱验证码",
    "mail.verify_email.body": (
        "您好：\n"
        "\n"
        "您在 {site} 确认此邮箱地址的验证码是：\n"
        "\n"
        "    {code}\n"
        "\n"
        "请在注册页面输入此验证码，{minutes} 分钟内有效。\n"
        "\n"
        "如果这不是您本人的操作，请忽略此邮件，任何账户都不会使用此邮箱地址。\n"
        "\n"
        "—— {site}\n"
    ),
    "mail.password_reset.subject": "重置您的 {site} 密码",
    "mail.password_reset.body": (
        "您好：\n"
        "\n"
        "有人申请重置您的 {site} 账户密码。验证码是：\n"
        "\n"
        "    {code}\n"
        "\n"
        "请在重置密码页面输入此验证码，然后设置新密码。验证码 {minutes} 分钟内有效。\n"
        "\n"
        "如果这不是您本人的操作，请忽略此邮件，您的密码不会改变。"
        "请勿将验证码告诉任何人，{site} 的工作人员不会向您索要。\n"
        "\n"
        "—— {site}\n"
    ),
    "mail.email_change.subject": "确认您的 {site} 新邮箱地址",
    "mail.email_change.body": (
        "您好：\n"
        "\n"
        "您申请将此邮箱地址用于您的 {site} 账户。验证码是：\n"
        "\n"
        "    {code}\n"
        "\n"
        "请在账户设置中输入此验证码以确认更改，{minutes} 分钟内有效。\n"
        "\n"
        "如果这不是您本人的操作，请忽略此邮件，该账户将继续使用原来的邮箱地址。\n"
        "\n"
        "—— {site}\n"
    ),
    "mail.invitation.subject": "{inviter} 邀请您加入 {site}",
    "mail.invitation.body": (
        "您好：\n"
        "\n"
        "{inviter} 邀请您加入 {site}。请打开以下链接接受邀请并创建账户：\n"
        "\n"
        "    {url}\n"
        "\n"
        "邀请 {days} 天内有效。\n"
        "\n"
        "如果您没有预期收到此邀请，请忽略此邮件；不打开链接就不会有任何操作。\n"
        "\n"
        "—— {site}\n"
    ),
    "mail.soft_limit.subject": "{site}：您的消费已达到提醒额度",
    "mail.soft_limit.body": (
        "您好：\n"
        "\n"
        "您的 {site} 账户{period}已消费 {spent}，达到了您设置的提醒额度 {limit}。\n"
        "\n"
        "这只是一条提醒，您的密钥仍可正常使用。如需调整提醒额度或充值，请登录 {site}。\n"
        "\n"
        "—— {site}\n"
    ),
    "mail.account_flagged.subject": "您的 {site} 账户被标记为异常",
    "mail.account_flagged.body": (
        "您好：\n"
        "\n"
        "您的 {site} 账户被标记为异常：{reason}。\n"
        "\n"
        "在账户复核之前，您的 API 密钥已暂停使用。请联系 {support} 申请复核。\n"
        "\n"
        "—— {site}\n"
    ),
    # ------------------------------------------------------------------ text messages
    # One SMS segment: under 70 characters.
    "sms.verify_phone": (
        "【{site}】您的验证码是 {code}，{minutes} 分钟内有效。如非本人操作，请忽略本短信。"
    ),
    # ------------------------------------------------------------------ periods (soft_limit)
    "period.day": "今天",
    "period.week": "本周",
    "period.month": "本月",
    "period.all": "累计",
    # ------------------------------------------------------------------ refusals
    "error.signup_closed": "目前不开放注册。请向管理员索取邀请。",
    "error.email_domain_not_allowed": (
        "仅限特定域名的邮箱注册，{domain} 不在其中。请使用您的工作邮箱。"
    ),
    "error.email_domain_blocked": "不能使用 {domain} 的邮箱地址。请换一个邮箱。",
    "error.email_disposable": "{domain} 是一次性邮箱服务。请使用您长期使用的邮箱地址。",
    "error.email_taken": "该邮箱地址已注册。请直接登录；如果忘记了密码，可以重置密码。",
    "error.invalid_email": "邮箱地址格式不正确，请检查后重试。",
    "error.weak_password": "密码太弱。请使用至少 {min_length} 个字符、且不常见的密码。",
    "error.invalid_phone": "手机号码格式不正确。请包含国家代码，例如 +86 138 0013 8000。",
    "error.phone_taken": "该手机号码已被其他账户使用。请换一个号码。",
    "error.invalid_birthday": "出生日期无效，请检查后重试。",
    "error.invalid_code": "验证码不正确。此验证码还可以尝试 {tries_left} 次。",
    "error.code_expired": "验证码已过期，请重新获取。",
    "error.code_tries_exceeded": "验证码错误次数过多，请重新获取。",
    "error.no_code_pending": "没有待输入的验证码，请重新获取。",
    "error.resend_too_soon": "验证码刚刚已发送，请 {seconds} 秒后再重新获取。",
    "error.too_many_codes": "获取验证码过于频繁，请 {seconds} 秒后再试。",
    "error.too_many_signups": "您所在网络的注册次数过多，请 {seconds} 秒后再试。",
    "error.too_many_attempts": "验证尝试次数过多，请 {seconds} 秒后再试。",
    "error.too_many_signins": "登录尝试次数过多，请 {seconds} 秒后再试。",
    "error.invalid_credentials": "邮箱地址或密码不正确。",
    "error.account_locked": "登录失败次数过多，账户已锁定 {minutes} 分钟。请稍后再试，或重置密码。",
    "error.account_flagged": (
        "您的账户被标记为异常：{reason}。您的密钥已暂停使用，请联系 {support} 申请复核。"
    ),
    "error.account_suspended": "您的账户已被停用：{reason}。如有疑问，请联系 {support}。",
    "error.email_not_verified": "请先验证邮箱：输入我们发送到该邮箱的验证码。",
    "error.phone_not_verified": "请先验证手机号码：输入我们通过短信发送的验证码。",
    "error.profile_incomplete": "请先完善个人资料（姓名和出生日期）。",
    "error.csrf_failed": "表单已失效，请刷新页面后重试。",
    "error.not_signed_in": "请先登录。",
    "error.invitation_invalid": "此邀请无效：已过期或已被使用。请重新索取邀请。",
    "error.oidc_failed": "通过单位账号登录失败。请重试，或使用邮箱地址和密码登录。",
    "error.oidc_email_unverified": "您的单位账号没有已验证的邮箱地址，无法用于在此登录。",
    "error.session_expired": "登录已过期，请重新登录。",
    "error.delivery_failed": "消息暂时无法发送，请几分钟后重试。",
}
