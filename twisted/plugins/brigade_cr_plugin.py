from twisted.application.service import ServiceMaker

brigade_cr = ServiceMaker(
    "brigade-cr",
    "brigade_cr.app.tap",
    "Container-registry webhooks to Brigade v1 builds",
    "brigade-cr",
)
