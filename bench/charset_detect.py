"""Which charset detector to trust for unlabelled or mislabelled mail text: measured, not guessed.

Run by hand:  .venv/bin/python bench/charset_detect.py

Samples are what customers send without a usable label: short subjects and one-line complaints in
Chinese (GB2312/GBK, Big5), Japanese (Shift_JIS, EUC-JP), Korean (EUC-KR), Russian (KOI8-R,
Windows-1251) and Western European text in Latin-1/Windows-1252, plus UTF-8. A detector is right
when its guess decodes the bytes back to the original text. "Latin->CJK" counts the worst kind of
wrong: Western text turned into Chinese, Japanese or Korean.
"""

from __future__ import annotations

import contextlib
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TEXTS: dict[str, list[str]] = {
    "gb18030": [
        "发票",
        "关于订单的问题",
        "退款还没有到账",
        "我的快递显示已签收，但是我没有收到包裹",
        "订单还没有发货",
        "杯子碎了",
        "请尽快处理",
        "质量太差了，要求退货",
        "客服电话打不通",
        "机房环境法规",
        "修改收件地址",
        "包裹破损",
    ],
    "big5hkscs": [
        "商品瑕疵換貨",
        "外盒破損，請問可以換貨嗎？",
        "訂單查詢",
        "退款",
        "謝謝您的幫忙",
        "香港地址",
        "請盡快回覆",
    ],
    "shift_jis": [
        "メルマガ解除",
        "お問い合わせ",
        "注文がまだ届きません",
        "返品について",
        "ありがとうございます",
    ],
    "euc_jp": ["配送について", "商品が壊れていました", "至急ご連絡ください"],
    "euc_kr": ["주문 취소", "환불 요청합니다", "배송이 늦어요"],
    "koi8_r": ["Запрос цены", "Добрый день, заказ не пришёл", "Спасибо"],
    "cp1251": ["Запрос цены", "Добрый день", "Возврат товара"],
    "cp1252": [
        "aaäöüßad asd",
        "Grüße",
        "Prüfung der Lieferung",
        "la livraison prévue n'est pas arrivée",
        "Où est mon colis?",
        "Müller",
        "Straße 5",
        "café crème",
        "Señor García",
        "Ærø",
        "Zoë",
        "Rückerstattung für Bestellung 5521",
        "déjà payé",
        "Fußball",
    ],
    "utf-8": ["发票", "Grüße", "Запрос", "メルマガ解除", "café"],
}
CJK = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]")


def detectors() -> dict[str, Callable[[bytes], str | None]]:
    found: dict[str, Callable[[bytes], str | None]] = {}
    import charset_normalizer

    def cn(data: bytes) -> str | None:
        best = charset_normalizer.from_bytes(data).best()
        return None if best is None else str(best.encoding)

    found["charset-normalizer"] = cn
    try:
        import chardet

        found["chardet"] = lambda data: chardet.detect(data)["encoding"]
    except ImportError:
        pass
    try:
        import cchardet

        found["cchardet"] = lambda data: cchardet.detect(data)["encoding"]
    except ImportError:
        pass
    try:
        import chardetng_py

        found["chardetng"] = chardetng_py.detect
    except ImportError:
        pass
    try:
        from channels.mail_parse import guess_codec

        found["kefu (chosen)"] = guess_codec
    except ImportError:
        pass
    return found


def decodes_to(data: bytes, codec: str | None, text: str) -> bool:
    if codec is None:
        return False
    try:
        return data.decode(codec) == text
    except (LookupError, UnicodeDecodeError):
        return False


def main() -> None:
    samples = [
        (codec, text, text.encode(codec)) for codec, texts in TEXTS.items() for text in texts
    ]
    print(f"{len(samples)} samples; right = decodes back to the original text")
    print(
        f"{'detector':20} {'right':>7} {'CJK':>7} {'Latin':>7} {'Latin->CJK':>10} {'ms/sample':>10}"
    )
    for name, detect in detectors().items():
        right = cjk_right = cjk_total = latin_right = latin_total = latin_to_cjk = 0
        started = time.perf_counter()
        for codec, text, data in samples:
            guess = detect(data)
            ok = decodes_to(data, guess, text)
            right += ok
            if CJK.search(text):
                cjk_total += 1
                cjk_right += ok
            elif codec == "cp1252":
                latin_total += 1
                latin_right += ok
                if guess and not ok:
                    with contextlib.suppress(LookupError):
                        latin_to_cjk += bool(CJK.search(data.decode(guess, "replace")))
        took = (time.perf_counter() - started) * 1000 / len(samples)
        print(
            f"{name:20} {right:3}/{len(samples):<3} {cjk_right:3}/{cjk_total:<3} "
            f"{latin_right:3}/{latin_total:<3} {latin_to_cjk:10} {took:10.2f}"
        )


if __name__ == "__main__":
    main()
