//! Shows the connection banners both windows draw (reconnecting, restored, the other side
//! away) in one language, for a look at them under Xvfb:
//! `cargo run -p tsunagu-endpoint --features gui --example connection_banners -- ja`.

use eframe::egui;
use tsunagu_endpoint::banner::ConnectionText;
use tsunagu_endpoint::gui;
use tsunagu_endpoint::lang::Lang;

/// The apps' base text size, so the banners look as they do there.
const TEXT_SIZE: f32 = 18.0;

struct Banners {
    lang: Lang,
}

impl eframe::App for Banners {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        egui::CentralPanel::default().show(ui, |ui| {
            ui.heading(format!("tsunagu — {}", self.lang.native_name()));
            for text in [
                ConnectionText::Reconnecting,
                ConnectionText::Restored,
                ConnectionText::PeerAway,
            ] {
                ui.add_space(8.0);
                gui::connection_banner(ui, self.lang, text);
            }
        });
    }
}

fn main() -> Result<(), String> {
    let lang = match std::env::args().nth(1).as_deref() {
        Some("ja") => Lang::Ja,
        _ => Lang::En,
    };
    let native = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_title("tsunagu banners")
            .with_inner_size([760.0, 260.0]),
        ..Default::default()
    };
    eframe::run_native(
        "tsunagu-banners",
        native,
        Box::new(move |cc| {
            gui::load_cjk_font(&cc.egui_ctx);
            cc.egui_ctx.all_styles_mut(|style| gui::set_text_size(style, TEXT_SIZE));
            Ok(Box::new(Banners { lang }))
        }),
    )
    .map_err(|e| e.to_string())
}
